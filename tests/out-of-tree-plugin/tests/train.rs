//! The out-of-tree plugin is registered beside the workspace's and trains through the real
//! runner (the conformance harness runs in its own binary, tests/conformance.rs).

use std::collections::HashMap;

use byol::BackboneSpec;
use byol_testkit::fixtures::{tiny_experiment, with_table};
use out_of_tree_plugin::ToyConvNetConfig;
use tch::{nn, Device, Tensor};

/// Links the workspace's dataset, augmentation and optimizer plugins (this plugin is not among them).
fn link() {
    plugins_all::link();
}

#[test]
fn toy_convnet_is_registered_next_to_the_workspace_plugins() {
    link();
    let names = byol::registry::names(byol::PluginKind::Backbone);
    assert!(
        names.contains(&"toy_convnet") && names.contains(&"resnet18"),
        "{names:?}"
    );
}

/// The tiny experiment on this plugin's backbone: 128 images, batch 32, 2 epochs of 4 steps.
fn experiment(init: &std::path::Path) -> String {
    let backbone = format!("type = \"toy_convnet\"\nchannels = 8\nfeatures = 16\npretrained = {init:?}\n");
    let experiment = tiny_experiment(&[
        ("run.seed", "3"),
        ("dataset.train_size", "128"),
        ("dataset.test_size", "32"),
        ("dataset.classes", "4"),
        ("optimizer.type", "\"sgd\""),
        ("byol.embedding_layer", "\"fc\""),
        ("schedule.epochs", "2"),
        ("schedule.warmup_epochs", "0"),
    ]);
    with_table(&experiment, "backbone", &backbone)
}

#[test]
fn toy_convnet_trains_and_its_parameters_change() {
    link();
    let dir = tempfile::tempdir().unwrap();
    // Known starting weights, written with this plugin's own names and read back by `pretrained`.
    let init = dir.path().join("init.safetensors");
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    ToyConvNetConfig::default()
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 16))
        .unwrap();
    let initial = byol::state_dict::to_cpu_sorted(&vs.variables());
    Tensor::write_safetensors(&initial, &init).unwrap();

    let text = experiment(&init);
    let experiment = byol_train::Experiment::parse(&text, &[]).unwrap();
    let run_dir = dir.path().join("run");
    let options = byol_train::RunOptions {
        run_dir: Some(run_dir.clone()),
        quiet: true,
        ..Default::default()
    };
    let summary = byol_train::train(&experiment, &options).unwrap();
    assert!(!summary.interrupted);
    assert_eq!(summary.steps, 8, "2 epochs of 4 steps");
    assert_eq!(summary.steps, summary.total_steps);
    assert!(summary.final_loss.is_some_and(f64::is_finite), "{summary:?}");
    assert!(
        summary.knn_after.is_some(),
        "the kNN monitor ran on the toy's embedding"
    );
    assert!(run_dir.join("summary.json").is_file());

    let trained: HashMap<String, Tensor> = Tensor::read_safetensors(run_dir.join("checkpoints/last/model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    for (name, before) in &initial {
        let after = &trained[&format!("online.backbone.{name}")];
        assert!(
            !after.equal(before),
            "online.backbone.{name} did not change in training"
        );
    }
    // The target moved away from the initial weights by EMA only, and less than the online net.
    let moved = |prefix: &str| -> f64 {
        initial
            .iter()
            .filter(|(n, t)| t.is_floating_point() && !n.contains("running_"))
            .map(|(n, t)| byol_testkit::max_abs_diff(&trained[&format!("{prefix}{n}")], t))
            .fold(0.0, f64::max)
    };
    let (online, target) = (moved("online.backbone."), moved("target.backbone."));
    assert!(
        target > 0.0 && target < online,
        "online moved {online}, target {target}"
    );
}
