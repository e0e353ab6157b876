//! Which keys a configuration parser accepts, asked of the parser itself: a serde struct with
//! `deny_unknown_fields` answers an unknown key with ``unknown field `k`, expected one of `a`,
//! `b` ``. Tests use it to hold documentation (`byol-run config --defaults`, each plugin's
//! example) to every key the parser takes, so a key added to a struct and forgotten in its
//! example fails a test.

/// The unknown key that makes the parser list the keys it accepts.
const PROBE: &str = "__probe";

/// The keys accepted anywhere under `start` (a table path in `text`; `[]` for the whole document)
/// that `text` does not show, as dotted paths. `text` is TOML in which a key is shown when it is
/// set, or commented out with a value (`# key = value`, uncommented here before parsing), or, for
/// a key of a table's sub-table (`augment.view1.flip_p`), named in a comment (how the long list
/// of per-view keys is documented). `parse` is the real parser of the whole document; it must
/// accept `text` with its keys uncommented.
pub fn missing_keys(text: &str, start: &[&str], parse: &dyn Fn(toml::Table) -> Result<(), String>) -> Vec<String> {
    let uncommented = uncomment_keys(text);
    let shown: toml::Table =
        toml::from_str(&uncommented).unwrap_or_else(|e| panic!("not TOML once uncommented: {e}\n{uncommented}"));
    if let Err(e) = parse(shown.clone()) {
        panic!("does not parse once uncommented: {e}\n{uncommented}");
    }
    let comments: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    let mut path: Vec<String> = start.iter().map(|s| s.to_string()).collect();
    let mut missing = Vec::new();
    walk(&shown, &mut path, &comments, parse, &mut missing);
    missing
}

/// The lines of a plugin's example (`byol::PluginInfo::example`) that set a key without the
/// comment its field's doc comment gives (`#[derive(KeyDocs)]`): a field added without a `///`.
pub fn undocumented_example_keys(example: &str) -> Vec<&str> {
    example
        .lines()
        .take_while(|line| !line.starts_with('['))
        .filter(|line| line.contains('=') && !line.starts_with('#') && !line.starts_with("type "))
        .filter(|line| !line.contains(" # "))
        .collect()
}

/// `text` with every commented-out assignment (`# key = value`, `# a.b = value`) uncommented.
pub fn uncomment_keys(text: &str) -> String {
    text.lines()
        .map(|line| match line.trim_start().strip_prefix('#').map(str::trim_start) {
            Some(rest) if is_assignment(rest) => rest.to_string(),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_assignment(line: &str) -> bool {
    let key_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    key_end > 0 && line[key_end..].trim_start().starts_with('=') && !line[key_end..].trim_start().starts_with("==")
}

fn walk(
    shown: &toml::Table,
    path: &mut Vec<String>,
    comments: &[&str],
    parse: &dyn Fn(toml::Table) -> Result<(), String>,
    missing: &mut Vec<String>,
) {
    let here = table_at(shown, path).unwrap_or_else(|| panic!("no table [{}] in the shown text", path.join(".")));
    for key in accepted_keys(shown, path, parse) {
        match here.get(&key) {
            Some(toml::Value::Table(_)) => {
                path.push(key);
                walk(shown, path, comments, parse, missing);
                path.pop();
            }
            Some(_) => {}
            None if path.len() >= 2 && comments.iter().any(|line| names_word(line, &key)) => {}
            None => missing.push(path.iter().chain([&key]).cloned().collect::<Vec<_>>().join(".")),
        }
    }
}

/// The keys `parse` accepts in the table at `path` of `shown`. A table that takes any key (no
/// `deny_unknown_fields`) is a test failure: it would let typos through.
fn accepted_keys(
    shown: &toml::Table,
    path: &[String],
    parse: &dyn Fn(toml::Table) -> Result<(), String>,
) -> Vec<String> {
    let mut probed = shown.clone();
    table_at_mut(&mut probed, path)
        .expect("the walked table exists")
        .insert(PROBE.into(), toml::Value::Integer(0));
    let where_ = format!("[{}]", path.join("."));
    let message = match parse(probed) {
        Ok(()) => panic!("{where_} accepts an unknown key `{PROBE}`: add #[serde(deny_unknown_fields)]"),
        Err(message) => message,
    };
    let marker = format!("unknown field `{PROBE}`");
    let Some((_, listing)) = message.split_once(&marker) else {
        panic!("{where_}: the parser's error does not name the unknown key `{PROBE}`: {message}")
    };
    // "expected one of `a`, `b`", "expected `a`", or "there are no fields"; the line ends it.
    let listing = listing.lines().next().unwrap_or_default();
    listing.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn table_at<'t>(table: &'t toml::Table, path: &[String]) -> Option<&'t toml::Table> {
    path.iter().try_fold(table, |t, key| t.get(key)?.as_table())
}

fn table_at_mut<'t>(table: &'t mut toml::Table, path: &[String]) -> Option<&'t mut toml::Table> {
    path.iter().try_fold(table, |t, key| t.get_mut(key)?.as_table_mut())
}

/// Whether `line` has `word` delimited by characters that cannot be part of a key.
fn names_word(line: &str, word: &str) -> bool {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(is_key_char) && !after.is_some_and(is_key_char)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_assignments_are_uncommented_and_prose_is_not() {
        let text = "a = 1\n# b = 2   # why\n# view1.c = [1, 2]\n# and in [x]: d = 3\n# e, f\n";
        assert_eq!(
            uncomment_keys(text),
            "a = 1\nb = 2   # why\nview1.c = [1, 2]\n# and in [x]: d = 3\n# e, f"
        );
    }

    #[test]
    fn words_are_whole() {
        assert!(names_word("# crop_scale, flip_p", "flip_p"));
        assert!(!names_word("# crop_scale", "crop"));
    }
}
