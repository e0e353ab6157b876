//! The library's contract around `Byol`, on a small ResNet-18: the tap given to the constructor
//! and the one its config names must agree, views are paired by position and must match, and a
//! store saved and loaded in place keeps the EMA's flat buffers.

use backbone_resnet::{ResNet18, ResNetConfig};
use byol::{Byol, ByolConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn backbone() -> ResNet18 {
    ResNet18(ResNetConfig {
        cifar_stem: true,
        width: 4,
        ..Default::default()
    })
}

fn config(concat_views: bool) -> ByolConfig {
    ByolConfig {
        hidden_dim: 16,
        projection_dim: 8,
        concat_views,
        ..Default::default()
    }
}

fn views(batch: i64) -> Tensor {
    Tensor::randn([batch, 3, 16, 16], (Kind::Float, Device::Cpu))
}

#[test]
fn the_tap_of_the_constructor_and_of_the_config_must_agree() {
    let other = ByolConfig {
        embedding_layer: "layer3".into(),
        ..config(false)
    };
    let error = Byol::new(&VarStore::new(Device::Cpu), &backbone(), 16, "avgpool", &other).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("\"avgpool\"") && message.contains("\"layer3\""),
        "{message}"
    );
    // The field at its default leaves the tap to the argument; the same tap in both is taken.
    let byol = Byol::new(&VarStore::new(Device::Cpu), &backbone(), 16, "layer3", &config(false)).unwrap();
    assert_eq!(byol.embedding_dim(), 4 * 4);
    Byol::new(&VarStore::new(Device::Cpu), &backbone(), 16, "layer3", &other).unwrap();
}

#[test]
fn views_of_different_shapes_are_refused_in_both_modes() {
    for concat_views in [false, true] {
        let byol = Byol::new(
            &VarStore::new(Device::Cpu),
            &backbone(),
            16,
            "avgpool",
            &config(concat_views),
        )
        .unwrap();
        // A larger second view would, concatenated, lose its extra rows without an error.
        for (first, second) in [(4, 6), (6, 4)] {
            let (a, b) = (views(first), views(second));
            let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| byol.loss(&a, &b))).unwrap_err();
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                message.contains("the two views have shapes [4, 3, 16, 16] and [6, 3, 16, 16]")
                    || message.contains("the two views have shapes [6, 3, 16, 16] and [4, 3, 16, 16]"),
                "concat_views = {concat_views}: {message}"
            );
        }
    }
}

#[test]
fn a_store_saved_and_loaded_in_place_keeps_the_target_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("byol.safetensors");
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let byol = Byol::new(&vs, &backbone(), 16, "avgpool", &config(false)).unwrap();
    byol.loss(&views(4), &views(4)).backward();
    tch::no_grad(|| {
        for p in byol.parameters(&vs) {
            let _ = p.tensor.shallow_clone().g_add_(&(p.tensor.grad() * -0.5));
        }
    });
    Tensor::write_safetensors(&byol::state_dict::to_cpu_sorted(&vs.variables()), &path).unwrap();

    tch::manual_seed(2);
    let mut loaded = VarStore::new(Device::Cpu);
    let again = Byol::new(&loaded, &backbone(), 16, "avgpool", &config(false)).unwrap();
    loaded.load(&path).unwrap();
    let images = views(3);
    assert!(again.embed(&images).equal(&byol.embed(&images)));
    // tau = 0: the target becomes the online network, through the EMA's buffers.
    again.update_target_with_tau(0.0);
    let variables = loaded.variables();
    let mut compared = 0;
    for (name, online) in &variables {
        let Some(target) = name
            .strip_prefix("online.")
            .filter(|sub| !sub.starts_with("predictor."))
            .and_then(|sub| variables.get(&format!("target.{sub}")))
        else {
            continue;
        };
        if online.requires_grad() {
            assert!(
                target.equal(online),
                "{name}: the target update does not reach it after a load"
            );
            compared += 1;
        }
    }
    assert!(compared > 10, "{compared} parameters compared");
    // Every parameter the optimizer is given is an online one, in name order.
    let parameters = again.parameters(&loaded);
    assert!(parameters.iter().all(|p| p.name.starts_with("online.")));
    assert!(parameters.windows(2).all(|w| w[0].name < w[1].name));
}

/// A backbone of one's own, with no TOML spec or registration: one convolution and a pool.
#[derive(Debug)]
struct OneConv {
    conv: tch::nn::Conv2D,
}

impl byol::Backbone for OneConv {
    fn taps(&self) -> Vec<&'static str> {
        vec!["conv"]
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        (tap == "conv").then_some(6)
    }

    fn forward_taps(&self, images: &Tensor, _train: bool, taps: &[&str]) -> Vec<Tensor> {
        let conv = images.apply(&self.conv).relu();
        taps.iter().map(|_| conv.shallow_clone()).collect()
    }
}

#[test]
fn a_backbone_of_ones_own_without_a_spec_trains_as_byol() {
    let vs = VarStore::new(Device::Cpu);
    let build = |path: &tch::nn::Path, _: &byol::BuildContext| -> Result<Box<dyn byol::Backbone>, byol::ByolError> {
        let conv = byol::nn::conv2d(&(path / "conv"), 3, 6, 3, 1, 1);
        Ok(Box::new(OneConv { conv }))
    };
    let byol = Byol::with_backbone(&vs, build, 16, "conv", &config(false)).unwrap();
    let names: Vec<String> = byol.parameters(&vs).into_iter().map(|p| p.name).collect();
    assert!(names.contains(&"online.backbone.conv.weight".to_string()), "{names:?}");
    assert!(vs.variables().contains_key("target.backbone.conv.weight"));
    let images = views(2);
    let before = byol.embed(&images);
    byol.loss(&views(4), &views(4)).backward();
    tch::no_grad(|| {
        for p in byol.parameters(&vs) {
            let _ = p.tensor.shallow_clone().g_add_(&(p.tensor.grad() * -1.0));
        }
    });
    byol.update_target(0, 10);
    assert_eq!(before.size(), [2, 6]);
    assert!(!byol.embed(&images).equal(&before), "a step moves the online backbone");
    let error = Byol::with_backbone(&VarStore::new(Device::Cpu), build, 16, "pool", &config(false)).unwrap_err();
    assert!(
        error.to_string().contains("pool") && error.to_string().contains("conv"),
        "{error}"
    );
}
