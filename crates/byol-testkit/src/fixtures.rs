//! The one tiny experiment the training tests start from, and its variants: one file, so that a
//! change to the schema is made once, and each test states only what it changes.

use toml_edit::{DocumentMut, Item};

/// 512 synthetic 16 px images, a width-4 CIFAR ResNet-18, LARS, batch 32: 16 steps per epoch, 3
/// epochs, a checkpoint every 4 steps; seconds on one CPU thread.
pub const TINY_EXPERIMENT: &str = include_str!("../fixtures/tiny.toml");

/// [`TINY_EXPERIMENT`] with `key = value` assignments, as `--set` makes them.
pub fn tiny_experiment(set: &[(&str, &str)]) -> String {
    with_keys(TINY_EXPERIMENT, set)
}

/// `experiment` with each `("table.key", "value")` set: dotted keys, values in TOML syntax
/// (`"\"cpu\""`, `"3"`, `"[1, 2]"`); tables are created as needed. Layout and comments stay.
pub fn with_keys(experiment: &str, set: &[(&str, &str)]) -> String {
    let mut document = parse(experiment);
    for (key, value) in set {
        let value: toml_edit::Value = value
            .parse()
            .unwrap_or_else(|e| panic!("{key} = {value}: not a TOML value: {e}"));
        let parts: Vec<&str> = key.split('.').collect();
        let (last, tables) = parts.split_last().expect("split yields one part");
        let mut table = document.as_table_mut();
        for part in tables {
            table = table
                .entry(part)
                .or_insert_with(toml_edit::table)
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key}: {part} is not a table"));
        }
        table[last] = toml_edit::value(value);
    }
    document.to_string()
}

/// `experiment` with its `[name]` table replaced by `body` (the table's key-values as TOML), e.g.
/// another `[dataset]` or `[backbone]`.
pub fn with_table(experiment: &str, name: &str, body: &str) -> String {
    let mut document = parse(experiment);
    let replacement = parse(body);
    let position = document.get(name).and_then(Item::as_table).and_then(|t| t.position());
    let mut table = replacement.as_table().clone();
    table.set_implicit(false);
    if let Some(position) = position {
        table.set_position(Some(position));
    }
    document[name] = Item::Table(table);
    document.to_string()
}

fn parse(text: &str) -> DocumentMut {
    text.parse().unwrap_or_else(|e| panic!("not valid TOML: {e}\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_change_only_what_they_name() {
        let text = tiny_experiment(&[("schedule.epochs", "1"), ("augment.crop_on", "\"loader\"")]);
        let table: toml::Table = toml::from_str(&text).unwrap();
        let base: toml::Table = toml::from_str(TINY_EXPERIMENT).unwrap();
        assert_eq!(table["schedule"]["epochs"].as_integer(), Some(1));
        assert_eq!(table["augment"]["crop_on"].as_str(), Some("loader"));
        assert_eq!(table["schedule"]["batch_size"], base["schedule"]["batch_size"]);

        let text = with_table(&text, "dataset", "type = \"image_folder\"\ntrain = \"x\"\n");
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["dataset"].as_table().unwrap().len(), 2);
        assert_eq!(table["backbone"], base["backbone"]);
    }
}
