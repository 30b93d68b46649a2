use super::*;
use proptest::prelude::*;

fn serde_ok(doc: &[u8]) -> bool {
    serde_json::from_slice::<&serde_json::value::RawValue>(doc).is_ok()
}

#[test]
fn accepts_valid_documents() {
    for doc in [
        "{}",
        "[]",
        " {\"a\" : [1, -2.5e+3, 0, 0.0, 1E9, true, false, null, \"x\\\"\\u00e9\\n\"], \"b\": {}} ",
        "\"just a string\"",
        "-0",
        "[[[[[]]]]]",
        "{\"k\":\"caf\u{e9} \u{1F600}\"}",
    ] {
        assert_eq!(validate(doc.as_bytes()), Ok(()), "{doc}");
        assert!(serde_ok(doc.as_bytes()), "{doc}");
    }
}

#[test]
fn refuses_invalid_documents_with_a_position() {
    for (doc, what) in [
        ("{oops}", "key must be a string"),
        ("{\"a\" 1}", "expected ':'"),
        ("{\"a\":1,}", "key must be a string"),
        ("[1,]", "expected a value"),
        ("[1 2]", "expected ',' or ']'"),
        ("{\"a\":1 \"b\":2}", "expected ',' or '}'"),
        ("01", "trailing characters"),
        ("1.", "unexpected end of input"),
        ("-", "unexpected end of input"),
        ("\"a\tb\"", "control character in string"),
        ("\"\\x\"", "invalid escape"),
        ("\"\\u12g4\"", "invalid \\u escape"),
        ("tru", "expected a value"),
        ("{} {}", "trailing characters"),
        ("{\"a\":", "unexpected end of input"),
        ("\"abc", "unexpected end of input"),
    ] {
        let e = validate(doc.as_bytes()).unwrap_err();
        assert_eq!(e.what, what, "{doc}");
        assert!(!serde_ok(doc.as_bytes()), "serde accepts {doc}");
    }
    assert_eq!(validate(b"\xff").unwrap_err().what, "invalid UTF-8");
    let deep = "[".repeat(200) + &"]".repeat(200);
    assert!(validate(deep.as_bytes()).is_err());
    let ok_deep = "[".repeat(100) + &"]".repeat(100);
    assert!(validate(ok_deep.as_bytes()).is_ok());
}

/// serde_json's `RawValue` (our oracle) checks only that a `\u` escape has four hex
/// digits, not that surrogates pair up; `serde_json::Value` would refuse them. We
/// accept them as the oracle does: the payload is passed on as sent, not decoded.
#[test]
fn lone_surrogate_escapes_are_accepted_as_serde_json_raw_value_does() {
    for doc in [
        r#"{"k":"\ud800"}"#,
        r#"{"k":"\udc00"}"#,
        r#"{"k":"\ud800\u0041"}"#,
        r#"{"k":"\ud83d\ude00"}"#,
    ] {
        assert_eq!(validate(doc.as_bytes()), Ok(()), "{doc}");
        assert!(serde_ok(doc.as_bytes()), "{doc}");
    }
}

/// A million open brackets (a 2 MB body) are refused at the depth limit on a stack
/// as small as a tokio worker's: the validator does not recurse (a recursive
/// skipper, as in sonic-rs, aborts the process here).
#[test]
fn a_million_open_brackets_are_refused_without_overflowing_a_small_stack() {
    let doc = "[".repeat(1_000_000) + &"]".repeat(1_000_000);
    let verdict = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || validate(doc.as_bytes()))
        .expect("spawn")
        .join()
        .expect("no stack overflow");
    let e = verdict.unwrap_err();
    assert_eq!(e.what, "nesting deeper than 128 levels");
    assert_eq!(e.at, 129);
}

#[test]
fn invalid_utf8_and_trailing_garbage_are_refused_where_they_start() {
    for (doc, at, what) in [
        (&b"{\"k\":\"\xc0\xaf\"}"[..], 6, "invalid UTF-8"),
        (b"{\"k\":\"\xed\xa0\x80\"}", 6, "invalid UTF-8"),
        (b"{\"k\":\"\xe2\x82\"}", 6, "invalid UTF-8"),
        (b"{} x", 3, "trailing characters"),
        (b"{}}", 2, "trailing characters"),
        (b"{}\x00", 2, "trailing characters"),
        (b"{}\x0c", 2, "trailing characters"),
    ] {
        assert_eq!(validate(doc), Err(SyntaxError { at, what }), "{doc:?}");
        assert!(!serde_ok(doc), "serde accepts {doc:?}");
    }
}

fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\"k\"",
        "\"\\u00e9\"",
        "\"\\\\\"",
        "\"\\t\"",
        "0",
        "12",
        "-3",
        "4.5",
        "6e7",
        "-0.1E-2",
        "true",
        "false",
        "null",
        "01",
        "1.",
        "-",
        "\"\\x\"",
        "\"\t\"",
        "\"open",
        "tru",
        "e",
        ".",
        "+1",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// The validator agrees with serde_json on documents built from JSON fragments.
    #[test]
    fn agrees_with_serde_json(tokens in prop::collection::vec(token(), 0..24)) {
        let doc = tokens.concat();
        prop_assert_eq!(validate(doc.as_bytes()).is_ok(), serde_ok(doc.as_bytes()), "{:?}", doc);
    }
}
