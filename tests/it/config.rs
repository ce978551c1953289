//! Configuration (docs/PRODUCT.md §3): the example file, unknown keys, secrets from env and files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qwen_edit_bot::config::{Config, Settings};
use qwen_edit_bot::core::quota::Window;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example")
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn the_example_config_loads_with_every_spec_key_and_its_defaults() {
    let s = Settings::load_with_env(
        &example(),
        env(&[
            ("DASHSCOPE_API_KEY", "sk-example-secret"),
            ("TELEGRAM_BOT_TOKEN", "123:abc-token"),
        ]),
    )
    .unwrap();
    let c = &s.config;
    assert_eq!(
        c.backend.primary().base_url,
        "https://dashscope-intl.aliyuncs.com/api/v1"
    );
    assert_eq!(
        (
            c.backend.primary().model.as_str(),
            c.backend.primary().timeout_secs
        ),
        ("qwen-image-edit-plus", 300)
    );
    assert_eq!(
        (
            c.backend.primary().max_concurrent,
            c.backend.primary().max_requests_per_second
        ),
        (4, 2.0)
    );
    assert!(c.telegram.enabled && !c.discord.enabled);
    assert_eq!(
        (c.telegram.mode.as_str(), c.telegram.webhook_listen.as_str()),
        ("polling", "0.0.0.0:8443")
    );
    assert_eq!(
        (c.quota.per_user, c.quota.window, c.quota.max_queue),
        (20, Window::Day, 200)
    );
    assert_eq!(c.http.listen, "127.0.0.1:9464");
    assert_eq!(qwen_edit_bot::app::problems(&s), Vec::<String>::new());
    // The example shows the defaults: an empty file means the same thing (parsed as text:
    // loading makes the relative database path absolute, beside the file).
    let c = &Config::parse(&std::fs::read_to_string(example()).unwrap()).unwrap();
    let empty = Config::parse("").unwrap();
    assert_eq!(
        toml::to_string(&empty.quota).unwrap(),
        toml::to_string(&c.quota).unwrap()
    );
    assert_eq!(
        toml::to_string(&empty.backend).unwrap(),
        toml::to_string(&c.backend).unwrap()
    );
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let err = Config::parse("[backend]\nmodle = \"x\"\n").unwrap_err();
    assert!(err.contains("modle"), "{err}");
    let err = Config::parse("[quotas]\nper_user = 1\n").unwrap_err();
    assert!(err.contains("quotas"), "{err}");
    let err = Config::parse("[quota]\nwindow = \"fortnight\"\n").unwrap_err();
    assert!(err.contains("fortnight"), "{err}");
}

#[test]
fn secrets_come_from_env_or_from_a_file_and_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-from-file\n").unwrap();
    let s = Settings::load_with_env(
        &example(),
        env(&[
            ("DASHSCOPE_API_KEY_FILE", key_file.to_str().unwrap()),
            ("TELEGRAM_BOT_TOKEN", "42:tok"),
        ]),
    )
    .unwrap();
    let key = s.secrets.dashscope_api_key.as_ref().unwrap();
    assert_eq!(qwen_edit_bot::config::expose(key), "sk-from-file");
    let shown = format!("{} {:?}", s.redacted(), s);
    assert!(
        !shown.contains("sk-from-file") && !shown.contains("42:tok"),
        "{shown}"
    );
    assert!(shown.contains("DASHSCOPE_API_KEY = set (redacted)"));
    let missing = Settings::load_with_env(
        &example(),
        env(&[("DASHSCOPE_API_KEY_FILE", "/nonexistent/key")]),
    );
    assert!(
        missing
            .unwrap_err()
            .to_string()
            .contains("DASHSCOPE_API_KEY_FILE")
    );
}

#[test]
fn missing_secrets_and_bad_values_are_each_one_problem_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[backend]\nmax_concurrent = 0\nbase_url = \"ftp://x\"\n[telegram]\nenabled = true\nmode = \"push\"\n\
         [discord]\nenabled = true\ngateway_url = \"https://gateway.discord.gg\"\n[http]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let s = Settings::load_with_env(&path, env(&[])).unwrap();
    let problems = qwen_edit_bot::app::problems(&s);
    for needle in [
        "max_concurrent",
        "base_url",
        "telegram.mode",
        "http.listen",
        "DASHSCOPE_API_KEY",
        "TELEGRAM_BOT_TOKEN",
        "discord.gateway_url",
        "DISCORD_TOKEN",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle} in {problems:?}"
        );
    }
    assert!(problems.iter().all(|p| !p.contains('\n')));
}

#[test]
fn each_adapter_checks_its_own_section_and_an_unknown_service_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[backend]\nkind = \"stable-horde\"\nmax_input_side = 5000\n[telegram]\nenabled = true\n\
         [quota]\ndatabase = \"redis://x\"\n",
    )
    .unwrap();
    let s = Settings::load_with_env(
        &path,
        env(&[("DASHSCOPE_API_KEY", "k"), ("TELEGRAM_BOT_TOKEN", "1:t")]),
    )
    .unwrap();
    let problems = qwen_edit_bot::app::problems(&s);
    assert_eq!(
        problems,
        [
            "backend.kind = \"stable-horde\": use \"dashscope\", \"comfyui\" or \"openai\""
                .to_string(),
            "quota.database = \"redis://x\": use a SQLite file path or a postgres:// URL"
                .to_string(),
        ],
        "an unknown service is not checked as DashScope (its max_input_side is not judged)"
    );
    std::fs::write(
        &path,
        "[backend]\nmax_input_side = 5000\n[telegram]\nenabled = true\n",
    )
    .unwrap();
    let s = Settings::load_with_env(
        &path,
        env(&[("DASHSCOPE_API_KEY", "k"), ("TELEGRAM_BOT_TOKEN", "1:t")]),
    )
    .unwrap();
    assert_eq!(
        qwen_edit_bot::app::problems(&s),
        ["backend.max_input_side must be between 384 and 3072"]
    );
}

#[test]
fn a_base_url_that_already_names_the_endpoint_is_refused_with_the_url_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let keys = [("DASHSCOPE_API_KEY", "k"), ("TELEGRAM_BOT_TOKEN", "1:t")];
    std::fs::write(
        &path,
        "[backend]\nbase_url = \"https://api.302.ai/aliyun/api/v1/services/aigc/multimodal-generation/generation\"\n\
         [telegram]\nenabled = true\n",
    )
    .unwrap();
    let s = Settings::load_with_env(&path, env(&keys)).unwrap();
    assert_eq!(
        qwen_edit_bot::app::problems(&s),
        [
            "backend.base_url = \"https://api.302.ai/aliyun/api/v1/services/aigc/multimodal-generation/generation\" \
             names the endpoint too: the bot adds /services/aigc/multimodal-generation/generation itself; \
             set backend.base_url = \"https://api.302.ai/aliyun/api/v1\""
        ]
    );
    // 302.AI's base URL as the README gives it is fine.
    std::fs::write(
        &path,
        "[backend]\nbase_url = \"https://api.302.ai/aliyun/api/v1\"\n[telegram]\nenabled = true\n",
    )
    .unwrap();
    let s = Settings::load_with_env(&path, env(&keys)).unwrap();
    assert_eq!(qwen_edit_bot::app::problems(&s), Vec::<String>::new());
}

#[test]
fn each_replica_takes_an_even_share_of_every_service_s_limits() {
    use qwen_edit_bot::config::{CallLimits, per_replica};
    let limits = |max_concurrent, max_requests_per_second| CallLimits {
        max_concurrent,
        max_requests_per_second,
    };
    let share = per_replica(limits(5, 10.0), 3);
    assert_eq!(share.max_concurrent, 2, "ceil(5 / 3)");
    assert!((share.max_requests_per_second - 10.0 / 3.0).abs() < 1e-12);
    assert_eq!(per_replica(limits(1, 2.0), 4).max_concurrent, 1, "never 0");
    assert_eq!(per_replica(limits(4, 2.0), 1), limits(4, 2.0));
    assert_eq!(per_replica(limits(6, 3.0), 2), limits(3, 1.5));
    // The whole config: every [[backend]] is split, nothing else about it changes.
    let c = Config::parse(
        "[[backend]]\nname = \"a\"\nmax_concurrent = 5\nmax_requests_per_second = 10.0\n\
         [[backend]]\nname = \"b\"\nmax_concurrent = 1\nmax_requests_per_second = 0.5\n\
         [quota]\ndatabase = \"postgres://qeb@db.internal/qeb\"\nreplicas = 3\n",
    )
    .unwrap();
    let [a, b] = c.backend.all() else {
        panic!("two services")
    };
    assert_eq!(
        (
            a.max_concurrent_per_replica(3),
            b.max_concurrent_per_replica(3)
        ),
        (2, 1)
    );
    let shared = a.for_replica(3);
    assert_eq!(shared.call_limits(), per_replica(a.call_limits(), 3));
    assert_eq!(
        (shared.label(), shared.base_url.as_str()),
        ("a", a.base_url.as_str())
    );
    assert_eq!(a.for_replica(1), *a);
    assert!(c.common_problems().is_empty(), "{:?}", c.common_problems());
}

#[test]
fn replicas_need_postgres_and_the_job_lease_stays_in_bounds() {
    let defaults = Config::parse("").unwrap();
    assert_eq!(
        (defaults.quota.replicas, defaults.quota.job_lease_secs),
        (1, 30)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let keys = [("DASHSCOPE_API_KEY", "k"), ("TELEGRAM_BOT_TOKEN", "1:t")];
    let problems = |quota: &str| {
        std::fs::write(
            &path,
            format!("[telegram]\nenabled = true\n[quota]\n{quota}"),
        )
        .unwrap();
        let s = Settings::load_with_env(&path, env(&keys)).unwrap();
        qwen_edit_bot::app::problems(&s)
    };
    let postgres = "database = \"postgres://qeb@db.internal:5432/qeb\"\n";
    assert_eq!(
        problems(&format!("{postgres}replicas = 3\njob_lease_secs = 3600\n")),
        Vec::<String>::new()
    );
    assert_eq!(
        problems("replicas = 2\n"),
        [
            "quota.replicas = 2: quota.replicas > 1 needs a postgres:// quota.database \
             (a SQLite file serves one process); set quota.replicas = 1"
        ]
    );
    assert_eq!(
        problems(&format!("{postgres}replicas = 0\n")),
        ["quota.replicas must be at least 1"]
    );
    for lease in [0, 1, 2, 3601] {
        assert_eq!(
            problems(&format!("{postgres}job_lease_secs = {lease}\n")),
            [format!(
                "quota.job_lease_secs = {lease} must be between 3 and 3600"
            )]
        );
    }
    assert_eq!(
        problems("replicas = 1\njob_lease_secs = 3\n"),
        Vec::<String>::new()
    );
    let err = Config::parse("[quota]\nreplicas = -1\n").unwrap_err();
    assert!(err.contains("replicas"), "{err}");
}
