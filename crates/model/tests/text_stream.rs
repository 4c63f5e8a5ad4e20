//! Incremental detokenization (model::TextStream) with SmolLM2's real tokenizer: text that may
//! begin a stop string, and incomplete UTF-8, are held back; a stop string cuts the text.
use model::{LoadedModel, TextStream};

fn tokenizer() -> model::Tokenizer {
    let p = model::fetch::default_model_path();
    assert!(p.exists(), "run `hybrid fetch` first ({})", p.display());
    LoadedModel::load(&p).unwrap().tokenizer
}

#[test]
fn stop_string_prefixes_are_held_back_and_the_stop_cuts_the_text() {
    let t = tokenizer();
    let ids = t.encode("Hello world, the end. More text", false).unwrap();
    let stop = vec!["the end".to_string()];
    let mut s = TextStream::new(&stop);
    let mut shown = String::new();
    let mut stopped = false;
    for &id in &ids {
        let (d, st) = s.push(&t, id).unwrap();
        shown.push_str(&d);
        if st {
            stopped = true;
            break;
        }
        assert!(
            !shown.ends_with("the"),
            "a possible stop prefix was shown: {shown:?}"
        );
    }
    assert!(stopped);
    assert_eq!(shown, "Hello world, ");
    assert_eq!(s.text, "Hello world, ");
    assert_eq!(s.finish(), "");
}

#[test]
fn multibyte_characters_are_shown_whole() {
    let t = tokenizer();
    let text = "Caf\u{e9} \u{1F642} done";
    let ids = t.encode(text, false).unwrap();
    let mut s = TextStream::new(&[]);
    let mut shown = String::new();
    for &id in &ids {
        let (d, st) = s.push(&t, id).unwrap();
        assert!(!st);
        assert!(
            !d.contains('\u{FFFD}'),
            "a partial character was shown: {d:?}"
        );
        shown.push_str(&d);
    }
    shown.push_str(&s.finish());
    assert_eq!(shown, text);
}
