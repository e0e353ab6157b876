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
    // As the README loads: every key and shape checked first, then copied in place.
    let loaded = VarStore::new(Device::Cpu);
    let again = Byol::new(&loaded, &backbone(), 16, "avgpool", &config(false)).unwrap();
    byol::state_dict::load_safetensors(&loaded.variables(), &path, |_| false).unwrap();
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

/// The panic message of `f`.
fn panic_of(f: impl FnOnce()) -> String {
    byol_testkit::panic_message(&*std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err())
}

/// What a newcomer's first calls get wrong is said by `Byol`, naming it, before libtorch fails
/// somewhere inside (or, for a batch of one image, trains on undefined batch-norm statistics).
#[test]
fn misuse_is_refused_in_the_library_s_own_words() {
    let vs = VarStore::new(Device::Cpu);
    let byol = Byol::new(&vs, &backbone(), 16, "avgpool", &config(false)).unwrap();
    let float = |size: &[i64]| Tensor::randn(size, (Kind::Float, Device::Cpu));
    for (size, expected) in [
        (&[3, 16, 16][..], "images of shape [3, 16, 16]; it takes [N, 3, H, W]"),
        (&[4, 1, 16, 16], "images of shape [4, 1, 16, 16]"),
        (&[4, 16, 16, 3], "images of shape [4, 16, 16, 3]"),
    ] {
        let (a, b) = (float(size), float(size));
        let message = panic_of(|| drop(byol.loss(&a, &b)));
        assert!(message.contains(&format!("Byol::loss: {expected}")), "{message}");
        let message = panic_of(|| drop(byol.embed(&a)));
        assert!(message.contains(&format!("Byol::embed: {expected}")), "{message}");
    }
    let bytes = Tensor::zeros([4, 3, 16, 16], (Kind::Uint8, Device::Cpu));
    let message = panic_of(|| drop(byol.embed(&bytes)));
    assert!(
        message.contains("images of kind Uint8; convert them to float"),
        "{message}"
    );
    for batch in [0, 1] {
        let (a, b) = (views(batch), views(batch));
        let message = panic_of(|| drop(byol.loss(&a, &b)));
        assert!(
            message.contains(&format!(
                "a batch of {batch} image(s); training-mode batch norm needs at least 2"
            )),
            "{message}"
        );
    }
    // Both views as one batch: one image a view makes a batch of two.
    let concatenated = Byol::new(&VarStore::new(Device::Cpu), &backbone(), 16, "avgpool", &config(true)).unwrap();
    assert!(concatenated.loss(&views(1), &views(1)).double_value(&[]).is_finite());
    let message = panic_of(|| drop(concatenated.loss(&views(0), &views(0))));
    assert!(
        message.contains("a batch of 0 image(s); training-mode batch norm needs at least 1"),
        "{message}"
    );
    let message = panic_of(|| drop(byol.loss(&views(4), &bytes)));
    assert!(message.contains("Byol::loss: images of kind Uint8"), "{message}");
    let message = panic_of(|| {
        byol.update_target(0, 0);
    });
    assert!(message.contains("total_steps is 0"), "{message}");

    // A second set of networks in the same store, and views of no size, are refused at build.
    let variables = vs.variables().len();
    let error = Byol::new(&vs, &backbone(), 16, "avgpool", &config(false)).unwrap_err();
    assert!(error.to_string().contains("already holds BYOL networks"), "{error}");
    assert_eq!(vs.variables().len(), variables, "nothing added to the store");
    for size in [0, -32] {
        let error = Byol::new(
            &VarStore::new(Device::Cpu),
            &backbone(),
            size,
            "avgpool",
            &config(false),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains(&format!("the views' image size is {size}")),
            "{error}"
        );
    }

    // The store converted after the build: the EMA would move buffers no network reads.
    let mut converted = VarStore::new(Device::Cpu);
    let byol = Byol::new(&converted, &backbone(), 16, "avgpool", &config(false)).unwrap();
    converted.double();
    let message = panic_of(|| {
        byol.update_target(0, 10);
    });
    assert!(
        message.contains("the VarStore was converted after the networks were built"),
        "{message}"
    );
}

/// A backbone whose `tap_dim` says another width than its features have is named at the first
/// forward, not by a matrix product inside the projector.
#[test]
fn a_tap_dim_that_lies_is_named() {
    #[derive(Debug)]
    struct Lying(OneConv);
    impl byol::Backbone for Lying {
        fn taps(&self) -> Vec<&'static str> {
            self.0.taps()
        }
        fn tap_dim(&self, _tap: &str) -> Option<i64> {
            Some(128)
        }
        fn forward_taps(&self, images: &Tensor, train: bool, taps: &[&str]) -> Vec<Tensor> {
            self.0.forward_taps(images, train, taps)
        }
    }
    let build = |path: &tch::nn::Path, _: &byol::BuildContext| -> Result<Box<dyn byol::Backbone>, byol::ByolError> {
        Ok(Box::new(Lying(OneConv {
            conv: byol::nn::conv2d(&(path / "conv"), 3, 6, 3, 1, 1),
        })))
    };
    let byol = Byol::with_backbone(&VarStore::new(Device::Cpu), build, 16, "conv", &config(false)).unwrap();
    for message in [
        panic_of(|| drop(byol.embed(&views(2)))),
        panic_of(|| drop(byol.loss(&views(4), &views(4)))),
    ] {
        assert!(
            message.contains("the backbone's tap 'conv' gives features of shape [")
                && message.contains("its tap_dim said 128"),
            "{message}"
        );
    }
}

/// Laying the weights out channels_last keeps every value, the target's EMA included, whenever
/// it is called.
#[test]
fn channels_last_after_training_keeps_the_target() {
    let vs = VarStore::new(Device::Cpu);
    let mut byol = Byol::new(&vs, &backbone(), 16, "avgpool", &config(false)).unwrap();
    byol.loss(&views(4), &views(4)).backward();
    tch::no_grad(|| {
        for p in byol.parameters(&vs) {
            let _ = p.tensor.shallow_clone().g_add_(&(p.tensor.grad() * -0.5));
        }
    });
    byol.update_target(0, 10);
    let before: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (k, t.copy())).collect();
    byol.use_channels_last(&vs).unwrap();
    let after = vs.variables();
    for (name, value) in &before {
        assert!(after[name].equal(value), "{name} changed");
    }
    let differing = before
        .iter()
        .filter(|(name, _)| name.starts_with("target."))
        .filter(|(name, value)| !value.equal(&after[&name.replacen("target.", "online.", 1)]))
        .count();
    assert!(
        differing > 10,
        "the target differs from the online network: {differing} tensors"
    );
}
