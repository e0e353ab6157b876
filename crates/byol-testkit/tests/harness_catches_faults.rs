//! The conformance harness must fail, naming the fault, on a backbone with any of the mistakes a
//! plugin author makes; and pass the same backbone without them.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Kind, Tensor};

use byol::nn::{batch_norm2d, conv2d, BatchNorm, BatchStatistics};
use byol::{Backbone, BackboneSpec, BuildContext, ByolError};

/// A conv-BN-ReLU-pool net with one deliberate mistake.
#[derive(Debug, Clone, Default, Serialize, Deserialize, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
struct Faulty {
    /// The mistake to make ("" for none).
    fault: String,
}

byol::register_plugin! {
    name: "faulty_for_tests",
    description: "the harness's own test subject",
    impl BackboneSpec for Faulty {
        fn build(&self, path: &nn::Path, _: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> {
            let root = if self.fault == "prefix" { path / "online" } else { path.clone() };
            let mut conv = conv2d(&(&root / "conv"), 3, 8, 3, 2, 1);
            if self.fault == "kept_view" {
                // A view of the weight made while building: it keeps the storage of then.
                conv.ws = conv.ws.view([8, 3, 3, 3]);
            }
            Ok(Box::new(Net {
                conv,
                bn: batch_norm2d(&(&root / "bn"), 8, &BatchStatistics::Local),
                _unused: (self.fault == "dead").then(|| root.randn_standard("unused", &[8])),
                hidden: (self.fault == "hidden_state").then(|| Tensor::randn([1, 8, 1, 1], tch::kind::FLOAT_CPU)),
                fault: self.fault.clone(),
            }))
        }
    }
}

#[derive(Debug)]
struct Net {
    conv: nn::Conv2D,
    bn: BatchNorm,
    /// Registered in the store, never used in forward.
    _unused: Option<Tensor>,
    hidden: Option<Tensor>,
    fault: String,
}

impl Backbone for Net {
    fn taps(&self) -> Vec<&'static str> {
        vec!["features", "avgpool"]
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        match tap {
            "features" | "avgpool" if self.fault == "wrong_dim" => Some(9),
            "features" | "avgpool" => Some(8),
            _ => None,
        }
    }

    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[&str]) -> Vec<Tensor> {
        let bn_train = match self.fault.as_str() {
            "eval_uses_batch" => true,
            "ignores_train" => false,
            _ => train,
        };
        let mut x = self.bn.forward_t(&images.apply(&self.conv), bn_train).relu();
        if let Some(hidden) = &self.hidden {
            x = x.g_add(hidden);
        }
        let pooled = x.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        if self.fault == "fixed_order" {
            return vec![x, pooled];
        }
        taps.iter()
            .map(|t| match *t {
                "features" => x.shallow_clone(),
                "avgpool" => pooled.shallow_clone(),
                other => panic!("no tap {other}"),
            })
            .collect()
    }
}

fn failure(fault: &str) -> String {
    let spec = Faulty { fault: fault.into() };
    let caught = std::panic::catch_unwind(|| byol_testkit::check_backbone(&spec, 16));
    let panic = caught.expect_err(&format!("the harness accepted fault '{fault}'"));
    byol_testkit::panic_message(&*panic)
}

#[test]
fn the_same_backbone_without_faults_passes() {
    byol_testkit::check_backbone(&Faulty::default(), 16);
}

#[test]
fn names_under_a_hard_coded_prefix_fail() {
    let e = failure("prefix");
    assert!(
        e.contains("[faulty_for_tests]") && e.contains("starts with 'online.': build under the path you are given"),
        "{e}"
    );
}

#[test]
fn a_parameter_that_gets_no_gradient_fails() {
    let e = failure("dead");
    assert!(
        e.contains("gradients do not reach every parameter") && e.contains("unused: no gradient"),
        "{e}"
    );
}

#[test]
fn batch_statistics_in_eval_mode_fail() {
    let e = failure("eval_uses_batch");
    assert!(e.contains("an eval-mode forward changed 'bn."), "{e}");
}

#[test]
fn ignoring_the_train_flag_fails() {
    let e = failure("ignores_train");
    assert!(e.contains("left the running statistics"), "{e}");
}

#[test]
fn a_wrong_tap_dim_fails() {
    let e = failure("wrong_dim");
    assert!(e.contains("tap 'features' is [4, 8, 8, 8], expected [4, 9]"), "{e}");
}

#[test]
fn taps_returned_out_of_order_fail() {
    let e = failure("fixed_order");
    assert!(e.contains("asked in reverse order"), "{e}");
}

#[test]
fn state_outside_the_state_dict_fails_the_round_trip() {
    let e = failure("hidden_state");
    assert!(
        e.contains("after a save/load round trip the eval-mode output differs"),
        "{e}"
    );
}

#[test]
fn a_weight_kept_as_a_view_from_the_build_fails() {
    let e = failure("kept_view");
    assert!(
        e.contains("must compute from its variables at each forward, not from views or copies"),
        "{e}"
    );
}
