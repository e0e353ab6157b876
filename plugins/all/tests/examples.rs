//! Every registered plugin's example (its `Default`, plus its optional keys): it parses into its
//! kind's spec, names its own `type`, shows every key its parser accepts each with its doc comment,
//! survives a TOML round trip, and builds where building needs no files.

use byol::registry::{plugins, PluginInfo, PluginKind};
use byol::{AugmentSpec, BackboneSpec, BuildContext, DatasetSpec, NamedParameter, OptimizerSpec};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

/// Plugins whose build reads files that a test machine lacks (a TorchScript module, a dataset on
/// disk); their examples are still parsed and checked.
const BUILD_NEEDS_FILES: [&str; 4] = ["torchscript", "image_folder", "cifar", "webdataset"];

/// The spec of `info`'s example, through the same typetag deserialization an experiment uses,
/// after a TOML round trip that must not change it.
fn parse<T: ?Sized>(info: &PluginInfo) -> Box<T>
where
    Box<T>: DeserializeOwned + Serialize,
{
    let name = info.name;
    let table = info.example_table().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        table.get("type").and_then(toml::Value::as_str),
        Some(name),
        "the example of '{name}' must set `type = \"{name}\"`:\n{}",
        info.example()
    );
    let spec: Box<T> = toml::Value::Table(table)
        .try_into()
        .unwrap_or_else(|e| panic!("the example of '{name}' does not parse: {e}\n{}", info.example()));
    let value = toml::Value::try_from(&spec).unwrap_or_else(|e| panic!("'{name}' does not serialize: {e}"));
    let again: Box<T> = value
        .clone()
        .try_into()
        .unwrap_or_else(|e| panic!("'{name}' does not parse its own TOML back: {e}\n{value}"));
    assert_eq!(
        toml::Value::try_from(&again).unwrap(),
        value,
        "TOML -> '{name}' -> TOML changed the configuration"
    );
    spec
}

/// The parser of `kind`'s table, for the key check.
fn parses_as(kind: PluginKind, whole: toml::Table) -> Result<(), String> {
    let table = whole.get(kind.table()).cloned().ok_or("no table")?;
    let value = toml::Value::Table(table.as_table().cloned().ok_or("not a table")?);
    let result = match kind {
        PluginKind::Backbone => value.try_into::<Box<dyn BackboneSpec>>().map(drop),
        PluginKind::Augment => value.try_into::<Box<dyn AugmentSpec>>().map(drop),
        PluginKind::Dataset => value.try_into::<Box<dyn DatasetSpec>>().map(drop),
        PluginKind::Optimizer => value.try_into::<Box<dyn OptimizerSpec>>().map(drop),
    };
    result.map_err(|e| e.to_string())
}

#[test]
fn every_plugins_example_parses_shows_every_key_and_builds() {
    plugins_all::link();
    let all = plugins();
    for kind in [
        PluginKind::Dataset,
        PluginKind::Backbone,
        PluginKind::Augment,
        PluginKind::Optimizer,
    ] {
        assert!(all.iter().any(|p| p.kind == kind), "no {kind:?} plugin is registered");
    }
    let context = BuildContext::new(Device::Cpu, 32);
    for info in all {
        let name = info.name;
        assert!(!info.description.trim().is_empty(), "'{name}' has no description");
        let text = format!("[{}]\n{}", info.kind.table(), info.example());
        let missing =
            byol_testkit::keys::missing_keys(&text, &[info.kind.table()], &|whole| parses_as(info.kind, whole));
        assert!(
            missing.is_empty(),
            "the example of '{name}' does not show {missing:?}: give them a value in its Default or \
             list them under `optional:` in its register_plugin!\n{text}"
        );
        // Each key shown is commented with its field's doc (derive(KeyDocs)); a new field
        // without one is caught here.
        let example = info.example();
        let undocumented = byol_testkit::keys::undocumented_example_keys(&example);
        assert!(
            undocumented.is_empty(),
            "the example of '{name}' shows keys without a comment: {undocumented:?}; give their \
             fields a /// doc comment (the first sentence becomes the comment)\n{example}"
        );
        let builds = !BUILD_NEEDS_FILES.contains(&name);
        match info.kind {
            PluginKind::Backbone => {
                let spec = parse::<dyn BackboneSpec>(info);
                if builds {
                    // At the ImageNet size the examples are written for (a ViT's position
                    // embeddings fit its image_size, 224 by default, and refuse other views).
                    let vs = nn::VarStore::new(Device::Cpu);
                    let net = spec
                        .build(&vs.root(), &BuildContext::new(Device::Cpu, 224))
                        .unwrap_or_else(|e| panic!("the example of '{name}' does not build: {e}"));
                    assert!(!net.taps().is_empty(), "'{name}' has no taps");
                }
            }
            PluginKind::Augment => {
                let spec = parse::<dyn AugmentSpec>(info);
                if builds {
                    spec.build(&context)
                        .unwrap_or_else(|e| panic!("the example of '{name}' does not build: {e}"));
                }
            }
            PluginKind::Dataset => {
                let spec = parse::<dyn DatasetSpec>(info);
                if builds {
                    let splits = spec
                        .build(&context)
                        .unwrap_or_else(|e| panic!("the example of '{name}' does not build: {e}"));
                    assert!(!splits.train.is_empty(), "'{name}' builds an empty training split");
                }
            }
            PluginKind::Optimizer => {
                let spec = parse::<dyn OptimizerSpec>(info);
                if builds {
                    let weight = Tensor::ones([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
                    let parameters = vec![NamedParameter {
                        name: "weight".into(),
                        tensor: weight.shallow_clone(),
                    }];
                    let mut optimizer = spec
                        .build(parameters, &context)
                        .unwrap_or_else(|e| panic!("the example of '{name}' does not build: {e}"));
                    (&weight * &weight).sum(Kind::Float).backward();
                    optimizer.step(spec.lr());
                    assert!(
                        weight.double_value(&[0, 0]) < 1.0,
                        "'{name}' did not move a parameter down its gradient"
                    );
                }
            }
        }
    }
}
