//! The plugin registry. typetag turns a TOML `type = "..."` into a spec (a `Box<dyn BackboneSpec>`,
//! ...), but cannot list what it knows; this inventory registry lists every plugin with its kind,
//! a description and an example generated from its `Default`, for `byol-run plugins`,
//! `byol-run config --defaults` and the tests that parse every example. [`register_plugin!`]
//! emits both registrations from one invocation, so they cannot drift apart.

use serde::Serialize;

use crate::{AugmentSpec, BackboneSpec, DatasetSpec, OptimizerSpec};

/// What a plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginKind {
    Dataset,
    Backbone,
    Augment,
    Optimizer,
}

impl PluginKind {
    /// The experiment-file table that holds this kind (`[backbone]`, ...).
    pub fn table(self) -> &'static str {
        match self {
            PluginKind::Dataset => "dataset",
            PluginKind::Backbone => "backbone",
            PluginKind::Augment => "augment",
            PluginKind::Optimizer => "optimizer",
        }
    }
}

/// The kind of plugin a spec trait declares: [`register_plugin!`] reads a plugin's kind from the
/// trait it implements, so that kind and trait cannot disagree. (An associated const on the spec
/// traits themselves would make them unusable as `dyn` objects.)
pub trait SpecKind {
    const KIND: PluginKind;
}

impl SpecKind for dyn BackboneSpec {
    const KIND: PluginKind = PluginKind::Backbone;
}

impl SpecKind for dyn AugmentSpec {
    const KIND: PluginKind = PluginKind::Augment;
}

impl SpecKind for dyn DatasetSpec {
    const KIND: PluginKind = PluginKind::Dataset;
}

impl SpecKind for dyn OptimizerSpec {
    const KIND: PluginKind = PluginKind::Optimizer;
}

/// One registered plugin. Built by [`register_plugin!`].
#[derive(Debug)]
pub struct PluginInfo {
    pub kind: PluginKind,
    /// The TOML `type` (the typetag name).
    pub name: &'static str,
    pub description: &'static str,
    /// `key = value` lines for keys that the default leaves unset (optional files, per-view
    /// overrides), shown commented out below the default's keys; `#` lines are plain comments.
    pub optional: &'static str,
    /// The configuration's keys with the first sentence of their doc comments
    /// ([`KeyDocs`], derived), shown beside the example's keys.
    #[doc(hidden)]
    pub key_docs: fn() -> Vec<(&'static str, &'static str)>,
    /// The plugin's `Default` spec as a table body (see [`render_table_body`]).
    #[doc(hidden)]
    pub render_default: fn() -> Result<String, String>,
}

impl PluginInfo {
    /// A complete table body (without the `[table]` header) that configures this plugin: its
    /// `Default` serialized (`type` first), then the [`PluginInfo::optional`] keys commented out.
    /// Sub-tables come last, with their full headers (`[augment.view1]`). Panics, naming the
    /// plugin, if its `Default` does not serialize to TOML: a plugin bug that the test of every
    /// registered example (`plugins/all`) and the backbone conformance harness catch.
    pub fn example(&self) -> String {
        self.example_text(true)
    }

    /// [`PluginInfo::example`] with the optional keys set, as a table: what a test parses to
    /// check that the example configures the plugin and that every key it accepts is shown.
    pub fn example_table(&self) -> Result<toml::Table, String> {
        let text = format!("[{}]\n{}", self.kind.table(), self.example_text(false));
        let mut whole: toml::Table = toml::from_str(&text).map_err(|e| {
            format!(
                "the example of {} '{}' is not TOML: {e}\n{text}",
                self.kind.table(),
                self.name
            )
        })?;
        match whole.remove(self.kind.table()) {
            Some(toml::Value::Table(table)) => Ok(table),
            _ => Err(format!("the example of '{}' is not a table", self.name)),
        }
    }

    fn example_text(&self, comment_optional: bool) -> String {
        let body = (self.render_default)().unwrap_or_else(|e| {
            panic!(
                "the Default of {} plugin '{}' does not serialize to TOML: {e}",
                self.kind.table(),
                self.name
            )
        });
        let optional: String = self
            .optional
            .lines()
            .map(|line| {
                if comment_optional && !line.trim_start().starts_with('#') {
                    format!("# {line}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        // Top-level keys must come before the first sub-table header to belong to the plugin's
        // table.
        let (keys, tables) = match body.find("\n[") {
            Some(at) => body.split_at(at + 1),
            None => (body.as_str(), ""),
        };
        let keys = commented(keys, &(self.key_docs)());
        format!("{}\n{optional}{}", keys.trim_end(), tables.trim_start())
            .replace("\n[", "\n\n[")
            .trim_start_matches('\n')
            .to_string()
    }
}

/// `key = value` lines with each key's doc as a trailing comment, aligned like the core tables of
/// `byol-run config --defaults`.
fn commented(lines: &str, docs: &[(&str, &str)]) -> String {
    lines
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or_default().trim();
            match docs.iter().find(|(k, doc)| *k == key && !doc.is_empty()) {
                Some((_, doc)) if key != "type" => format!("{line:<26} # {doc}\n"),
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

/// A plugin configuration's keys and the first sentence of each one's `///` doc comment: derive
/// it (`#[derive(KeyDocs)]`) on the type given to [`register_plugin!`](crate::register_plugin).
pub trait KeyDocs {
    fn key_docs() -> Vec<(&'static str, &'static str)>;
}

pub use byol_derive::KeyDocs;

inventory::collect!(PluginInfo);

/// Every registered plugin, sorted by kind then name.
pub fn plugins() -> Vec<&'static PluginInfo> {
    let mut all: Vec<_> = inventory::iter::<PluginInfo>.into_iter().collect();
    all.sort_by_key(|p| (p.kind, p.name));
    all
}

/// The registered plugin of `kind` named `name`.
pub fn find(kind: PluginKind, name: &str) -> Option<&'static PluginInfo> {
    plugins().into_iter().find(|p| p.kind == kind && p.name == name)
}

/// The registered names of one kind, for error messages.
pub fn names(kind: PluginKind) -> Vec<&'static str> {
    plugins()
        .into_iter()
        .filter(|p| p.kind == kind)
        .map(|p| p.name)
        .collect()
}

/// `spec` (a `&dyn XxxSpec`, whose typetag serialization writes `type` first) as the body of the
/// `[table]` it belongs in: keys in declaration order, unset options left out, sub-tables under
/// full headers (`[augment.view1]`) and empty ones dropped, no blank lines.
pub fn render_table_body<S: Serialize + ?Sized>(table: &str, spec: &S) -> Result<String, String> {
    let whole = toml::to_string(&std::collections::BTreeMap::from([(table, spec)])).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = whole.lines().collect();
    let is_header = |line: &str| line.starts_with('[');
    let mut body = String::new();
    for (i, line) in lines.iter().enumerate() {
        if *line == format!("[{table}]") {
            continue;
        }
        // A header with nothing under it before the next header: an empty sub-table.
        if is_header(line)
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_none_or(|l| is_header(l))
        {
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        body.push_str(line);
        body.push('\n');
    }
    Ok(body)
}

/// Registers a plugin: the typetag impl of its kind's spec trait plus its inventory entry, whose
/// kind comes from the trait and whose example is the type's `Default` serialized.
///
/// ```ignore
/// byol::register_plugin! {
///     name: "resnet18",
///     description: "torchvision ResNet-18",
///     optional: "pretrained = \"resnet18.safetensors\"",   // may be left out
///     impl BackboneSpec for ResNet18 {
///         fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> { ... }
///     }
/// }
/// ```
/// The trait must be in scope by its plain name, and the type must implement `Default` (a
/// valid, sensible configuration: it is the example users copy) and derive [`KeyDocs`] (each
/// key's doc comment is its comment in the example). `optional` lists `key = value`
/// lines for keys the default leaves unset, shown commented out. The plugin crate depends on
/// `typetag` and `serde` (the typetag expansion names them).
#[macro_export]
macro_rules! register_plugin {
    (
        name: $name:literal,
        description: $description:expr,
        $(optional: $optional:expr,)?
        impl $trait:ident for $ty:ident { $($body:tt)* }
    ) => {
        #[typetag::serde(name = $name)]
        impl $trait for $ty { $($body)* }

        $crate::__private::inventory::submit! {
            $crate::registry::PluginInfo {
                kind: <dyn $trait as $crate::registry::SpecKind>::KIND,
                name: $name,
                description: $description,
                optional: $crate::register_plugin!(@optional $($optional)?),
                key_docs: <$ty as $crate::registry::KeyDocs>::key_docs,
                render_default: || {
                    let spec: ::std::boxed::Box<dyn $trait> =
                        ::std::boxed::Box::new(<$ty as ::core::default::Default>::default());
                    $crate::registry::render_table_body(
                        <dyn $trait as $crate::registry::SpecKind>::KIND.table(),
                        spec.as_ref(),
                    )
                },
            }
        }
    };
    (@optional $optional:expr) => { $optional };
    (@optional) => { "" };
}
