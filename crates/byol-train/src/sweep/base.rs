//! The experiment a sweep file describes without its `[sweep]` table: what every trial parses.

use std::ops::Range;

use toml_edit::{Document, Item, Key, Table};

use crate::experiment::explain;

/// The text with every `sweep` key blanked out (its table headers and key/value pairs replaced
/// by spaces), found from the spans toml_edit parses: errors in the rest keep their line and
/// column. Should blanking ever leave other tables than the file's own minus `sweep`, those
/// tables are serialized instead.
pub(super) fn without_sweep(text: &str) -> anyhow::Result<String> {
    let mut expected: toml::Table = toml::from_str(text).map_err(|e| explain(text, &e))?;
    expected.remove("sweep");
    let blanked = Document::parse(text).ok().map(|document| {
        let mut spans = Vec::new();
        sweep_spans(document.as_table(), &[], &mut spans);
        blank(text, &spans)
    });
    match blanked {
        Some(out) if toml::from_str::<toml::Table>(&out).ok().as_ref() == Some(&expected) => Ok(out),
        _ => Ok(toml::to_string(&expected)?),
    }
}

/// The spans of the `[sweep...]` headers and of the key/value pairs whose full dotted key starts
/// with `sweep`, in `table` (at dotted path `path`) and the tables under it.
fn sweep_spans(table: &Table, path: &[&str], spans: &mut Vec<Range<usize>>) {
    let in_sweep = |keys: &[&Key]| path.first().copied().or_else(|| keys.first().map(|k| k.get())) == Some("sweep");
    if in_sweep(&[]) {
        spans.extend(table.span());
    }
    for (keys, value) in table.get_values() {
        if let (true, Some(first), Some(end)) = (in_sweep(&keys), keys.first().and_then(|k| k.span()), value.span()) {
            spans.push(first.start..end.end);
        }
    }
    for (key, item) in table.iter() {
        let mut inner = path.to_vec();
        inner.push(key);
        match item {
            Item::Table(t) => sweep_spans(t, &inner, spans),
            Item::ArrayOfTables(array) => {
                for t in array.iter() {
                    sweep_spans(t, &inner, spans);
                }
            }
            _ => {}
        }
    }
}

/// `text` with every character in `spans` but line breaks replaced by a space.
fn blank(text: &str, spans: &[Range<usize>]) -> String {
    text.char_indices()
        .map(|(i, c)| {
            if c != '\n' && c != '\r' && spans.iter().any(|s| s.contains(&i)) {
                ' '
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_sweep_keeps_lines_and_columns() {
        let text = "[run]\nseed = 1\n\n[sweep]\nmethod = \"grid\" # a comment\n[sweep.parameters]\n\"a.b\" = [\n  [1, 2],\n]\n\n[schedule]\nepochs = 2\n";
        let stripped = without_sweep(text).unwrap();
        assert_eq!(stripped.len(), text.len());
        assert_eq!(stripped.lines().count(), text.lines().count());
        assert!(!stripped.contains("sweep") && !stripped.contains("grid"), "{stripped}");
        assert_eq!(stripped.lines().nth(11), Some("epochs = 2"));
        let parsed: toml::Table = toml::from_str(&stripped).unwrap();
        assert_eq!(parsed["schedule"]["epochs"].as_integer(), Some(2));
        assert!(!parsed.contains_key("sweep"));
    }

    #[test]
    fn dotted_and_inline_sweep_keys_are_blanked_too() {
        let text = "sweep.method = \"grid\"\nsweep.parameters = { \"run.seed\" = [1, 2] }\n[run]\nseed = 1\n";
        let stripped = without_sweep(text).unwrap();
        assert_eq!(stripped.lines().count(), text.lines().count());
        assert_eq!(stripped.lines().nth(3), Some("seed = 1"), "{stripped}");
        let parsed: toml::Table = toml::from_str(&stripped).unwrap();
        assert!(!parsed.contains_key("sweep") && parsed["run"]["seed"].as_integer() == Some(1));
        // A sweep table inside another is not the sweep.
        let nested = "[run]\nseed = 1\n[backbone.sweep]\nx = 1\n";
        assert_eq!(without_sweep(nested).unwrap(), nested);
    }
}
