//! The real binary: `edit` against the fake backend, `check-config`, `quota`, `usage`, `run`.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::fakes::dashscope::{API_KEY, FakeDashScope, Reply};
use crate::fakes::images;

const BIN: &str = env!("CARGO_BIN_EXE_qwen-edit-bot");
const TELEGRAM_TOKEN: &str = "123:cli-test-token";

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/q.sqlite3");
        let text = format!(
            "{config}\n[quota]\ndatabase = {:?}\nper_user = 5\n",
            db.to_str().unwrap()
        );
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        Self { dir }
    }

    /// Creates the database as the daemon's first run does (admin commands need it).
    fn with_store(self) -> Self {
        qwen_edit_bot::store::sqlite::SqliteStore::open(&self.path("data/q.sqlite3")).unwrap();
        self
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .arg("--config")
            .arg(self.path("config.toml"))
            .current_dir(self.dir.path())
            .env_clear()
            .env("DASHSCOPE_API_KEY", API_KEY)
            .env("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
            .env("RUST_LOG", "debug");
        cmd.output().await.unwrap()
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn backend_config(fake: &FakeDashScope) -> String {
    format!(
        "[backend]\nbase_url = {:?}\nmax_requests_per_second = 100.0\n",
        fake.base_url
    )
}

#[tokio::test]
async fn edit_fits_the_image_calls_the_backend_and_writes_every_result() {
    let fake = FakeDashScope::start().await;
    fake.set_result_size(1024, 768);
    let d = Dir::new(&backend_config(&fake));
    std::fs::write(d.path("big.jpg"), images::jpeg(5000, 3750)).unwrap();
    let out_arg = d.path("out/night.png");
    let out = d
        .run(&[
            "edit",
            d.path("big.jpg").to_str().unwrap(),
            "--prompt",
            "make it night",
            "-n",
            "2",
            "--seed",
            "7",
            "--out",
            out_arg.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Vec<PathBuf> = text(&out.stdout).lines().map(PathBuf::from).collect();
    assert_eq!(
        printed,
        vec![d.path("out/night-1.png"), d.path("out/night-2.png")]
    );
    for p in &printed {
        let (format, w, h) = images::dims(&std::fs::read(p).unwrap());
        assert_eq!((format, w, h), (image::ImageFormat::Png, 1024, 768));
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].violations.is_empty(), "{:?}", seen[0].violations);
    assert_eq!(seen[0].images, vec![("image/jpeg".into(), 2048, 1536)]);
    assert_eq!(seen[0].body["parameters"]["seed"], 7);
    let logs = text(&out.stderr);
    assert!(!logs.contains(API_KEY), "the key leaked into the logs");
}

#[tokio::test]
async fn edit_explains_a_refusal_and_exits_non_zero() {
    let fake = FakeDashScope::start().await;
    fake.script([Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    let d = Dir::new(&backend_config(&fake));
    std::fs::write(d.path("a.png"), images::png(600, 600)).unwrap();
    let out = d
        .run(&["edit", d.path("a.png").to_str().unwrap(), "--prompt", "x"])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("content policy"),
        "{}",
        text(&out.stderr)
    );
    assert!(!d.path("edited.png").exists());
    std::fs::write(d.path("notes.png"), b"just text").unwrap();
    let out = d
        .run(&[
            "edit",
            d.path("notes.png").to_str().unwrap(),
            "--prompt",
            "x",
        ])
        .await;
    assert!(
        text(&out.stderr).contains("not an image"),
        "{}",
        text(&out.stderr)
    );
    let out = d
        .run(&[
            "edit",
            d.path("a.png").to_str().unwrap(),
            "--prompt",
            "x",
            "-n",
            "9",
        ])
        .await;
    assert!(
        text(&out.stderr).contains("--n must be"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn check_config_prints_the_effective_config_without_secrets() {
    let d = Dir::new("[telegram]\nenabled = true\n");
    let out = d.run(&["check-config"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("model = \"qwen-image-edit-plus\""));
    assert!(shown.contains("DASHSCOPE_API_KEY = set (redacted)"));
    assert!(!shown.contains(API_KEY) && !shown.contains(TELEGRAM_TOKEN));
    let bad = Dir::new("[backend]\ntimeout = 3\n");
    let out = bad.run(&["check-config"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("timeout"),
        "{}",
        text(&out.stderr)
    );
    let no_key = Dir::new("[telegram]\nenabled = true\n");
    let mut cmd = std::process::Command::new(BIN);
    let out = cmd
        .args(["check-config", "--config"])
        .arg(no_key.path("config.toml"))
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("DASHSCOPE_API_KEY") && err.contains("TELEGRAM_BOT_TOKEN"),
        "{err}"
    );
}

#[tokio::test]
async fn quota_commands_change_the_store_and_survive_between_runs() {
    let d = Dir::new("").with_store();
    let out = d.run(&["quota", "set", "telegram:42", "9"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("used 0 of 9 (own limit)"),
        "{}",
        text(&out.stdout)
    );
    d.run(&["quota", "block", "telegram:42"]).await;
    let out = d.run(&["quota", "show", "telegram:42"]).await;
    assert!(
        text(&out.stdout).contains("blocked"),
        "{}",
        text(&out.stdout)
    );
    d.run(&["quota", "unblock", "telegram:42"]).await;
    d.run(&["quota", "set", "telegram:42", "default"]).await;
    let out = d.run(&["quota", "show", "telegram:42"]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("used 0 of 5 this day window") && !shown.contains("blocked"),
        "{shown}"
    );
    let out = d.run(&["quota", "show", "42"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("platform:id"));
    assert!(Path::new(&d.path("data/q.sqlite3")).exists());
}

#[tokio::test]
async fn usage_reports_delivered_images_from_the_ledger() {
    let fake = FakeDashScope::start().await;
    let d = Dir::new(&backend_config(&fake));
    std::fs::write(d.path("a.png"), images::png(600, 600)).unwrap();
    let out = d
        .run(&[
            "edit",
            d.path("a.png").to_str().unwrap(),
            "--prompt",
            "x",
            "-n",
            "3",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    fake.script(
        [Reply::Error {
            status: 500,
            code: "InternalError",
            retry_after: None,
        }; 4],
    );
    let out = d
        .run(&["edit", d.path("a.png").to_str().unwrap(), "--prompt", "x"])
        .await;
    assert!(!out.status.success());
    let out = d
        .run(&["usage", "--since", "2026-01-01", "--by", "user"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("since 2026-01-01"), "{shown}");
    let row = shown
        .lines()
        .find(|l| l.starts_with("cli:local"))
        .expect("a row for CLI edits");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        ["cli:local", "1", "3", "0", "1", "3", "0.15", "0.00"],
        "jobs, delivered, undelivered, failed, generated, cost, lost"
    );
    let out = d.run(&["usage", "--since", "yesterday"]).await;
    assert!(text(&out.stderr).contains("YYYY-MM-DD"));
}

#[tokio::test]
async fn run_says_what_is_missing_instead_of_idling() {
    let d = Dir::new("[telegram]\nenabled = false\n");
    let out = d.run(&["run"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no platform is enabled"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn allow_adds_removes_and_lists_places_and_check_config_shows_the_merged_lists() {
    let d = Dir::new(
        "[telegram]\nenabled = true\nallowed_chats = [-700]\n[discord]\ndirect_messages = false\n",
    )
    .with_store();
    let out = d.run(&["allow", "add", "telegram:-800"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("telegram:-800 is allowed now"), "{shown}");
    assert!(
        shown.contains("telegram groups: only -800, -700"),
        "{shown}"
    );
    let out = d.run(&["allow", "add", "discord:77"]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("note: discord answered everywhere until now"),
        "{shown}"
    );
    assert!(shown.contains("discord servers: only 77"), "{shown}");
    let out = d.run(&["check-config"]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("# telegram groups: only -800, -700"),
        "{shown}"
    );
    assert!(shown.contains("# discord servers: only 77"), "{shown}");
    assert!(shown.contains("# discord direct messages: off"), "{shown}");
    let out = d.run(&["allow", "remove", "telegram:-800"]).await;
    let shown = text(&out.stdout);
    assert!(shown.contains("telegram groups: only -700"), "{shown}");
    let out = d.run(&["allow", "remove", "telegram:-700"]).await;
    let shown = text(&out.stdout);
    assert!(shown.contains("the config file still lists it"), "{shown}");
    let out = d.run(&["allow", "list"]).await;
    assert!(text(&out.stdout).contains("discord servers: only 77"));
    for bad in ["telegram:abc", "slack:1", "discord:-5", "77"] {
        let out = d.run(&["allow", "add", bad]).await;
        assert!(!out.status.success(), "{bad}");
        assert!(
            text(&out.stderr).contains("give telegram:<chat id>"),
            "{bad}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn check_config_refuses_a_default_size_the_model_cannot_take() {
    for (config, needle) in [
        ("[backend]\ndefault_size = \"big\"\n", "write WIDTHxHEIGHT"),
        (
            "[backend]\ndefault_size = \"4000x4000\"\n",
            "from 512 to 2048",
        ),
        (
            "[backend]\nmodel = \"qwen-image-edit\"\ndefault_size = \"1024x1024\"\n",
            "takes no output size",
        ),
    ] {
        let out = Dir::new(config).run(&["check-config"]).await;
        assert!(!out.status.success(), "{config}");
        assert!(text(&out.stderr).contains(needle), "{}", text(&out.stderr));
    }
    let out = Dir::new("[backend]\ndefault_size = \"1024*1536\"\n[telegram]\nenabled = true\n")
        .run(&["check-config"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Every config `run` refuses, `check-config` refuses too, with the same first problem.
#[tokio::test]
async fn check_config_refuses_exactly_what_run_refuses() {
    let broken = [
        ("", "no platform is enabled"),
        ("[telegram]\nenabled = false\n", "no platform is enabled"),
        (
            "[telegram]\nenabled = true\n[quota]\nprice_per_image = -1.0\n",
            "price_per_image",
        ),
        (
            "[telegram]\nenabled = true\n[backend]\nmodel = \"gpt-image-1\"\n",
            "backend.model",
        ),
        (
            "[telegram]\nenabled = true\n[backend]\nbase_url = \"https://\"\n",
            "backend.base_url",
        ),
        (
            "[telegram]\nenabled = true\n[backend]\nbase_url = \"https://exa mple.com\"\n",
            "backend.base_url",
        ),
        (
            "[telegram]\nenabled = true\napi_url = \"http//api.telegram.org\"\n",
            "telegram.api_url",
        ),
        (
            "[telegram]\nenabled = true\n[quota]\ndatabase = \"redis://localhost\"\n",
            "quota.database",
        ),
        (
            "[telegram]\nenabled = true\n[backend]\nmax_input_side = 5000\n",
            "backend.max_input_side",
        ),
        (
            "[telegram]\nenabled = true\n[quota]\nreplicas = 2\n",
            "quota.replicas > 1 needs a postgres:// quota.database",
        ),
        (
            "[telegram]\nenabled = true\n[quota]\nreplicas = 0\n",
            "quota.replicas must be at least 1",
        ),
        (
            "[telegram]\nenabled = true\n[quota]\njob_lease_secs = 1\n",
            "quota.job_lease_secs",
        ),
        (
            "[telegram]\nenabled = true\nlimit_per_group = \"20 a minute\"\n",
            "telegram.limit_per_group = \"20 a minute\": write a limit as calls/seconds",
        ),
        (
            "[telegram]\nenabled = true\n[discord]\nlimit_per_channel = \"0/5s\"\n",
            "discord.limit_per_channel = \"0/5s\": at least 1 call",
        ),
    ];
    for (config, needle) in broken {
        // Written whole, without Dir's [quota] table (some cases bring their own).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut outputs = Vec::new();
        for command in ["check-config", "run"] {
            let out = with_config(command, &path, "refused at once").await;
            assert!(!out.status.success(), "{command} accepted {config:?}");
            let err = text(&out.stderr);
            assert!(err.contains(needle), "{command} on {config:?}: {err}");
            outputs.push(err);
        }
        assert!(
            !dir.path().join("data").exists(),
            "a refused config creates nothing"
        );
    }
}

/// `qwen-edit-bot <command> --config <path>` run from the config's folder with the test
/// secrets only, ended within 30 s (`what` says what was expected otherwise).
async fn with_config(command: &str, path: &std::path::Path, what: &str) -> std::process::Output {
    let out = tokio::process::Command::new(BIN)
        .args([command, "--config"])
        .arg(path)
        .current_dir(path.parent().unwrap())
        .env_clear()
        .env("DASHSCOPE_API_KEY", API_KEY)
        .env("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .expect(what)
        .unwrap()
}

/// With several replicas on one PostgreSQL database, `check-config` says what share of each
/// service's limits one replica calls it within (no server needed: the port refuses, and the
/// stored places are then reported as unreadable).
#[tokio::test]
async fn check_config_prints_each_service_s_share_of_its_limits_per_replica() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[telegram]\nenabled = true\n\
         [[backend]]\nname = \"dashscope\"\n\
         max_concurrent = 5\nmax_requests_per_second = 10.0\n\
         [[backend]]\nname = \"spare\"\npriority = 1\n\
         max_concurrent = 1\nmax_requests_per_second = 2.0\n\
         [quota]\ndatabase = \"postgres://qeb@127.0.0.1:1/qeb\"\nreplicas = 3\n",
    )
    .unwrap();
    let out = with_config(
        "check-config",
        &path,
        "check-config answers without a server",
    )
    .await;
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}\n{shown}", text(&out.stderr));
    assert!(shown.contains("replicas = 3"), "{shown}");
    assert!(
        shown.contains(
            "# backend dashscope: each of 3 replicas calls it at most 2 at once and at most \
             3.333 times a second (of max_concurrent = 5, max_requests_per_second = 10); \
             together up to 6 at once (each share is rounded up)\n"
        ),
        "{shown}"
    );
    assert!(
        shown.contains(
            "# backend spare: each of 3 replicas calls it at most 1 at once and at most \
             0.667 times a second (of max_concurrent = 1, max_requests_per_second = 2); \
             together up to 3 at once (each share is rounded up)\n"
        ),
        "{shown}"
    );
    // One replica uses the limits as configured, and check-config says nothing about shares.
    std::fs::write(&path, "[telegram]\nenabled = true\n").unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env_clear()
        .env("DASHSCOPE_API_KEY", API_KEY)
        .env("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("per replica"));
}

#[tokio::test]
async fn admin_commands_on_a_missing_database_name_it_and_create_nothing() {
    let d = Dir::new("");
    for args in [
        vec!["usage"],
        vec!["quota", "show", "telegram:1"],
        vec!["quota", "block", "telegram:1"],
        vec!["allow", "list"],
    ] {
        let out = d.run(&args).await;
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("there is no database at") && err.contains("data/q.sqlite3"),
            "{args:?}: {err}"
        );
        assert_eq!(err.matches("error:").count(), 1, "said once: {err}");
    }
    assert!(!d.path("data").exists(), "nothing created");
    // A file that is not ours is not taken for a database either.
    std::fs::create_dir_all(d.path("data")).unwrap();
    std::fs::write(d.path("data/q.sqlite3"), "not a database").unwrap();
    let out = d.run(&["usage"]).await;
    assert!(text(&out.stderr).contains("is not a qwen-edit-bot database"));
    assert_eq!(
        std::fs::read(d.path("data/q.sqlite3")).unwrap(),
        b"not a database"
    );
}

#[tokio::test]
async fn environment_overrides_set_any_key_and_a_wrong_name_is_an_error() {
    let d = Dir::new("[telegram]\nenabled = true\n");
    let check = |vars: Vec<(&'static str, &'static str)>| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["check-config", "--config"])
            .arg(d.path("config.toml"))
            .env_clear()
            .env("DASHSCOPE_API_KEY", API_KEY)
            .env("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output()
    };
    let out = check(vec![
        ("QEB_HTTP__LISTEN", "0.0.0.0:9464"),
        ("QEB_QUOTA__PER_USER", "7"),
        ("QEB_TELEGRAM__ADMIN_IDS", "[1, 2]"),
        ("QEB_SHUTDOWN_GRACE_SECS", "65"),
        ("QEB_GIT_COMMIT", "abc123"),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for line in [
        "listen = \"0.0.0.0:9464\"",
        "per_user = 7",
        "admin_ids = [\n    1,\n    2,\n]",
        "shutdown_grace_secs = 65",
    ] {
        assert!(shown.contains(line), "{line} in {shown}");
    }
    let out = check(vec![("QEB_HTTP__LISTN", "0.0.0.0:1")]).await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("QEB_HTTP__LISTN: no such setting"));
    let out = check(vec![("QEB_QUOTA__PER_USER", "many")]).await.unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("QEB_QUOTA__PER_USER = \"many\": invalid type"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_toml_error_shows_the_line_with_a_caret_but_never_a_pasted_secret() {
    let d =
        Dir::new("[telegram]\nenabled = true\nbot_token = \"123:pasted-secret\"\nmode = polling\n");
    let out = d.run(&["check-config"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("mode = polling") && err.contains('^'), "{err}");
    assert!(!err.contains("pasted-secret"), "{err}");
    let d = Dir::new("[telegram]\nbot_token = \"123:pasted-secret\" x\n");
    let err = text(&d.run(&["check-config"]).await.stderr);
    assert!(err.contains("bot_token") && err.contains('^'), "{err}");
    assert!(!err.contains("pasted-secret"), "{err}");
}

#[tokio::test]
async fn a_negative_seed_is_a_clear_error_and_help_and_version_say_enough() {
    let d = Dir::new("");
    std::fs::write(d.path("a.png"), images::png(600, 600)).unwrap();
    let out = d
        .run(&[
            "edit",
            d.path("a.png").to_str().unwrap(),
            "--prompt",
            "x",
            "--seed",
            "-1",
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--seed must be a whole number from 0 to 2147483647"),
        "{}",
        text(&out.stderr)
    );
    let version = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    let version = text(&version.stdout);
    assert!(
        version.contains("(commit ") && version.contains(", built 20"),
        "{version}"
    );
    for sub in [
        vec!["quota", "set"],
        vec!["allow", "add"],
        vec!["usage"],
        vec!["health"],
    ] {
        let help = std::process::Command::new(BIN)
            .args(&sub)
            .arg("--help")
            .output()
            .unwrap();
        let help = text(&help.stdout);
        // Every argument and option line carries a description (not just clap's default).
        for line in help.lines().filter(|l| l.starts_with("  ")) {
            let described = line
                .trim()
                .split_once("  ")
                .is_some_and(|(_, text)| !text.trim_start().starts_with('['));
            assert!(described, "{sub:?}: undocumented {line:?}\n{help}");
        }
    }
    let bash = std::process::Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(text(&bash.stdout).contains("qwen-edit-bot"));
}
