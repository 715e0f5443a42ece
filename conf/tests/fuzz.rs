//! Device files fuzzed with property tests: whatever the text, parsing
//! never panics, and a refused file's every error carries a line inside
//! the file (and a column), so `dropshim check` can point at it.
//! Bounded for CI (RELIABILITY_FUZZ_CASES, default 256 per property);
//! `scripts/reliability-long.sh` raises it.

use proptest::prelude::*;

const VALID: &str = include_str!("../examples/native.toml");

fn cases() -> u32 {
    std::env::var("RELIABILITY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Parses `text` and checks the contract on refusal.
fn judge(text: &str) -> Result<(), TestCaseError> {
    if let Err(err) = dropshim_conf::parse(text, "<fuzz>") {
        let lines = text.lines().count().max(1);
        let diags = err.diagnostics();
        prop_assert!(!diags.is_empty(), "refused without a located error: {err}");
        for d in diags {
            prop_assert!(
                d.line >= 1 && d.line <= lines + 1,
                "line {} outside a {lines}-line file: {d}",
                d.line
            );
            prop_assert!(d.column >= 1, "column 0: {d}");
        }
    }
    Ok(())
}

/// Lines that look like device-file lines, to get past the TOML syntax
/// and into the validator.
fn line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "name",
        "backend",
        "addresses",
        "endpoint",
        "limits",
        "subflows",
        "add_addr_accepted",
        "path_manager",
        "scheduler",
        "default",
        "loopback",
        "listeners",
        "dest",
        "ports",
        "action",
        "memory_mib",
        "kernel",
        "gateway",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        "\"[a-z0-9./: -]{0,24}\"".prop_map(|s| s),
        Just("true".to_string()),
        Just("[\"198.18.1.1/24\", \"2001:2::1/64\"]".to_string()),
        Just("[\"subflow\", \"signal\", \"fullmesh\", \"subflow\"]".to_string()),
        Just("{ subflows = 9, add_addr_accepted = -1 }".to_string()),
        Just("[22, \"5202-5201\", 70000]".to_string()),
        "[ -~]{0,20}".prop_map(|s| s),
    ];
    let table = prop::sample::select(vec![
        "[device]",
        "[[interfaces]]",
        "[mptcp]",
        "[policy]",
        "[[policy.rule]]",
        "[uml]",
        "[lkl]",
        "[[device]]",
        "[colour]",
    ]);
    prop_oneof![
        3 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => table.prop_map(str::to_string),
        1 => "[ -~\t]{0,30}".prop_map(|s| s),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn reliability_fuzz_arbitrary_text_never_panics(text in "\\PC{0,400}") {
        judge(&text)?;
    }

    #[test]
    fn reliability_fuzz_device_like_lines(lines in prop::collection::vec(line(), 0..24)) {
        judge(&lines.join("\n"))?;
    }

    #[test]
    fn reliability_fuzz_mutated_example(pos in 0usize..4000, len in 0usize..40, insert in "[ -~\n]{0,12}") {
        // Splice bytes into a real device file (on char boundaries).
        let chars: Vec<char> = VALID.chars().collect();
        let at = pos.min(chars.len());
        let end = (at + len).min(chars.len());
        let text: String = chars[..at].iter().chain(insert.chars().collect::<Vec<_>>().iter()).chain(chars[end..].iter()).collect();
        judge(&text)?;
    }
}

#[test]
fn reliability_fuzz_the_example_itself_is_valid() {
    // The mutation property starts from a file that parses.
    assert!(dropshim_conf::parse(VALID, "native.toml").is_ok());
}

/// Found by the properties above: a file that ends right after `key = `
/// is refused with an empty message ("1:8: ; expected valid TOML").
/// conf/src/validate.rs (split_expected) drops toml's only line when it
/// starts with "expected" (fixed in conf/src/validate.rs).
#[test]
fn reliability_fuzz_found_empty_message_at_end_of_file() {
    for text in ["name = ", "[device]\nname = "] {
        let err = dropshim_conf::parse(text, "<fuzz>").expect_err("not a valid file");
        for d in err.diagnostics() {
            assert!(!d.message.is_empty(), "empty message for {text:?}: {d}");
        }
    }
}
