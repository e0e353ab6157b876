//! The plugin registry: typetag dispatches TOML `type = "..."` to a spec, and this inventory
//! registry lists every plugin with a description and an example, for `byol-run plugins`,
//! `byol-run config --defaults` and the round-trip tests. [`register_plugin!`] emits both from one
//! invocation so that they cannot drift apart.

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

/// One registered plugin.
#[derive(Debug)]
pub struct PluginInfo {
    pub kind: PluginKind,
    /// The TOML `type` (the typetag name).
    pub name: &'static str,
    pub description: &'static str,
    /// A complete TOML table body (without the `[table]` header) that configures this plugin.
    pub example: &'static str,
}

inventory::collect!(PluginInfo);

/// Every registered plugin, sorted by kind then name.
pub fn plugins() -> Vec<&'static PluginInfo> {
    let mut all: Vec<_> = inventory::iter::<PluginInfo>.into_iter().collect();
    all.sort_by_key(|p| (p.kind, p.name));
    all
}

/// The registered names of one kind, for error messages.
pub fn names(kind: PluginKind) -> Vec<&'static str> {
    plugins()
        .into_iter()
        .filter(|p| p.kind == kind)
        .map(|p| p.name)
        .collect()
}

/// Registers a plugin: the typetag impl of its kind's spec trait plus its inventory entry.
///
/// ```ignore
/// byol::register_plugin! {
///     kind: Backbone,
///     name: "resnet18",
///     description: "torchvision ResNet-18",
///     example: "type = \"resnet18\"\ncifar_stem = true",
///     impl byol::BackboneSpec for ResNet18 { fn build(...) { ... } }
/// }
/// ```
/// The trait must be in scope by its plain name. The plugin crate depends on `typetag` and
/// `serde` (the typetag expansion names them).
#[macro_export]
macro_rules! register_plugin {
    (
        kind: $kind:ident,
        name: $name:literal,
        description: $description:expr,
        example: $example:expr,
        impl $trait:ident for $ty:ident { $($body:tt)* }
    ) => {
        #[typetag::serde(name = $name)]
        impl $trait for $ty { $($body)* }

        $crate::__private::inventory::submit! {
            $crate::registry::PluginInfo {
                kind: $crate::registry::PluginKind::$kind,
                name: $name,
                description: $description,
                example: $example,
            }
        }
    };
}
