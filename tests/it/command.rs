//! The caption parser (docs/PRODUCT.md §4.3).

use proptest::prelude::*;
use qwen_edit_bot::core::command::{CommandError, EditCommand, ParseContext, parse};

const BOT: ParseContext<'static> = ParseContext {
    bot_username: Some("QwenEditBot"),
    command_optional: false,
};

fn ok(text: &str) -> EditCommand {
    parse(text, BOT).unwrap().unwrap()
}

#[test]
fn a_plain_edit_command_gives_the_prompt_with_defaults() {
    let c = ok("/edit make it night");
    assert_eq!(c.prompt, "make it night");
    assert_eq!(
        (c.negative.as_deref(), c.seed, c.n, c.truncated),
        (None, None, None, false)
    );
    assert_eq!(c.count(), 1);
}

#[test]
fn every_option_of_the_spec_example_is_read() {
    let c = ok("/edit make it night --no people, text --seed 42 --n 2");
    assert_eq!(c.prompt, "make it night");
    assert_eq!(c.negative.as_deref(), Some("people, text"));
    assert_eq!(c.seed, Some(42));
    assert_eq!(c.n, Some(2));
}

#[test]
fn options_may_come_first_and_use_equals_or_a_phone_em_dash() {
    let c = ok("/edit --seed=7 —n 3 add a hat");
    assert_eq!(
        (c.prompt.as_str(), c.seed, c.n),
        ("add a hat", Some(7), Some(3))
    );
    // An em-dashed word that is not an option is prompt text; `--` words must be options.
    let c = ok("/edit make it —night— now");
    assert_eq!(c.prompt, "make it —night— now");
}

#[test]
fn a_command_for_our_bot_by_name_is_taken_case_insensitively() {
    assert_eq!(ok("/edit@qweneditbot add snow").prompt, "add snow");
}

#[test]
fn a_command_addressed_to_another_bot_is_not_for_us() {
    assert_eq!(parse("/edit@OtherBot add snow", BOT), Ok(None));
    let anonymous = ParseContext {
        bot_username: None,
        command_optional: false,
    };
    assert_eq!(parse("/edit@OtherBot add snow", anonymous), Ok(None));
}

#[test]
fn text_without_the_command_is_ignored_unless_the_command_is_optional() {
    assert_eq!(parse("make it night", BOT), Ok(None));
    assert_eq!(parse("/editing is fun", BOT), Ok(None));
    assert_eq!(parse("/start", BOT), Ok(None));
    let private = ParseContext {
        bot_username: Some("QwenEditBot"),
        command_optional: true,
    };
    assert_eq!(
        parse("make it night", private).unwrap().unwrap().prompt,
        "make it night"
    );
    assert_eq!(parse("/start", private), Ok(None));
}

#[test]
fn an_unknown_flag_is_an_error_that_names_it() {
    assert_eq!(
        parse("/edit cat --strength 3", BOT),
        Err(CommandError::UnknownFlag("--strength".into()))
    );
    assert_eq!(
        parse("/edit cat --x=1", BOT),
        Err(CommandError::UnknownFlag("--x".into()))
    );
}

#[test]
fn an_empty_prompt_is_a_usage_error() {
    assert_eq!(parse("/edit", BOT), Err(CommandError::EmptyPrompt));
    assert_eq!(
        parse("/edit   \u{3000} ", BOT),
        Err(CommandError::EmptyPrompt)
    );
    assert_eq!(parse("/edit --seed 3", BOT), Err(CommandError::EmptyPrompt));
}

#[test]
fn bad_option_values_are_refused_with_the_value() {
    assert_eq!(
        parse("/edit a --seed -1", BOT),
        Err(CommandError::BadSeed("-1".into()))
    );
    assert_eq!(
        parse("/edit a --seed 2147483648", BOT),
        Err(CommandError::BadSeed("2147483648".into()))
    );
    assert_eq!(
        parse("/edit a --seed x", BOT),
        Err(CommandError::BadSeed("x".into()))
    );
    assert_eq!(
        parse("/edit a --n 7", BOT),
        Err(CommandError::BadCount("7".into()))
    );
    assert_eq!(
        parse("/edit a --n 0", BOT),
        Err(CommandError::BadCount("0".into()))
    );
    assert_eq!(
        parse("/edit a --n", BOT),
        Err(CommandError::MissingValue("--n"))
    );
    assert_eq!(ok("/edit a --seed 2147483647").seed, Some(2_147_483_647));
}

#[test]
fn prompts_over_800_characters_are_cut_on_a_character_boundary_and_flagged() {
    let long = "夜".repeat(900);
    let c = ok(&format!("/edit {long}"));
    assert!(c.truncated);
    assert_eq!(c.prompt.chars().count(), 800);
    let exact = "a".repeat(800);
    assert!(!ok(&format!("/edit {exact}")).truncated);
}

#[test]
fn a_negative_prompt_over_500_characters_is_refused() {
    let text = format!("/edit cat --no {}", "x".repeat(501));
    assert_eq!(parse(&text, BOT), Err(CommandError::NegativeTooLong));
    let text = format!("/edit cat --no {}", "x".repeat(500));
    assert_eq!(ok(&text).negative.unwrap().len(), 500);
}

#[test]
fn chinese_emoji_and_full_width_spaces_survive() {
    let c = ok("/edit\u{3000}把天空变成夜晚 🌙\n加上星星 --no 人物");
    assert_eq!(c.prompt, "把天空变成夜晚 🌙\n加上星星");
    assert_eq!(c.negative.as_deref(), Some("人物"));
}

#[test]
fn a_bare_double_dash_or_number_is_prompt_text() {
    assert_eq!(
        ok("/edit make it 2--3x brighter -- really --5").prompt,
        "make it 2--3x brighter -- really --5"
    );
}

#[test]
fn parts_from_the_cli_follow_the_same_rules() {
    let c = EditCommand::from_parts("add a hat", Some("blur"), Some("5"), Some("2")).unwrap();
    assert_eq!(
        (c.prompt.as_str(), c.negative.as_deref(), c.seed, c.n),
        ("add a hat", Some("blur"), Some(5), Some(2))
    );
    assert_eq!(
        EditCommand::from_parts(" ", None, None, None),
        Err(CommandError::EmptyPrompt)
    );
    assert_eq!(
        EditCommand::from_parts("a", None, None, Some("9")),
        Err(CommandError::BadCount("9".into()))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_parser_never_panics_and_keeps_its_limits(text in "\\PC{0,1200}") {
        for command_optional in [false, true] {
            let ctx = ParseContext { bot_username: Some("Bot"), command_optional };
            if let Ok(Some(c)) = parse(&text, ctx) {
                prop_assert!(!c.prompt.trim().is_empty());
                prop_assert!(c.prompt.chars().count() <= 800);
                prop_assert!(c.negative.as_ref().is_none_or(|n| n.chars().count() <= 500));
                prop_assert!(c.seed.is_none_or(|s| s <= 2_147_483_647));
                prop_assert!(c.n.is_none_or(|n| (1..=6).contains(&n)));
            }
        }
    }

    #[test]
    fn commands_built_from_pieces_parse_back(
        prompt in "[a-z\u{4e00}-\u{4e20} ]{1,50}[a-z]",
        seed in 0u32..=2_147_483_647,
        n in 1u8..=6,
        noise in prop::sample::select(vec![" ", "\u{3000}", "\n", "\t"]),
    ) {
        let text = format!("/edit{noise}{prompt}{noise}--seed {seed} --n {n}");
        let c = parse(&text, ParseContext::default()).unwrap().unwrap();
        prop_assert_eq!(c.prompt, prompt.trim().to_owned());
        prop_assert_eq!(c.seed, Some(seed));
        prop_assert_eq!(c.n, Some(n));
    }

    #[test]
    fn arbitrary_flag_soup_never_panics(parts in prop::collection::vec(
        prop::sample::select(vec!["--no", "--seed", "--n", "—n", "--", "--seed=", "x", "9", "夜", " ", "--zz", "@", "/edit"]), 0..30)) {
        let text = format!("/edit {}", parts.join(" "));
        for (text, command_optional) in [(text, false), (parts.concat(), true)] {
            let ctx = ParseContext { bot_username: None, command_optional };
            if let Ok(Some(c)) = parse(&text, ctx) {
                prop_assert!(!c.prompt.trim().is_empty());
                prop_assert!(!c.prompt.split_whitespace().any(|w| w == "--seed" || w == "--n"));
            }
        }
    }
}

#[test]
fn size_is_read_as_wxh_w_star_h_or_with_a_times_sign() {
    use qwen_edit_bot::core::command::Size;
    for text in [
        "/edit wide --size 1024x1536",
        "/edit wide --size=1024*1536",
        "/edit wide —size 1024×1536",
    ] {
        let c = ok(text);
        assert_eq!(c.prompt, "wide", "{text}");
        assert_eq!(
            c.size,
            Some(Size {
                width: 1024,
                height: 1536
            }),
            "{text}"
        );
        assert_eq!(c.size.unwrap().wire(), "1024*1536");
    }
    assert_eq!(ok("/edit x").size, None);
    for bad in ["big", "1024", "0x512", "x512", "-5x5", "1024x"] {
        assert_eq!(
            parse(&format!("/edit x --size {bad}"), BOT),
            Err(CommandError::BadSize(bad.into())),
            "{bad}"
        );
    }
    assert_eq!(
        parse("/edit x --size", BOT),
        Err(CommandError::MissingValue("--size"))
    );
    let c = EditCommand::from_parts("x", None, None, None)
        .unwrap()
        .with_size(Some("640x480"))
        .unwrap();
    assert_eq!(
        c.size,
        Some(Size {
            width: 640,
            height: 480
        })
    );
}

#[test]
fn the_model_decides_which_sizes_it_takes() {
    use qwen_edit_bot::core::command::Size;
    use qwen_edit_bot::core::ports::model::SizeRejection;
    let size = |width, height| Size { width, height };
    let plus = qwen_edit_bot::backend::dashscope::caps_of("qwen-image-edit-plus");
    assert_eq!(plus.check_size(size(512, 2048)), Ok(()));
    for (w, h) in [(511, 1024), (1024, 2049), (4000, 4000)] {
        assert_eq!(
            plus.check_size(size(w, h)),
            Err(SizeRejection::OutOfRange {
                min: 512,
                max: 2048
            })
        );
    }
    let base = qwen_edit_bot::backend::dashscope::caps_of("qwen-image-edit");
    assert_eq!(
        base.check_size(size(1024, 1024)),
        Err(SizeRejection::NotSupported)
    );
}
