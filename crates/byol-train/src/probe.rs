//! The online linear probe: a classifier trained on the detached online representation alongside
//! BYOL (as in the paper's appendix and solo-learn), so label accuracy is visible while training
//! without affecting it. Stateless SGD, so that a checkpoint of its weights resumes it exactly.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::distributed::DataParallel;

#[derive(Debug)]
pub struct OnlineProbe {
    classifier: nn::Linear,
    lr: f64,
    correct: Tensor,
    seen: i64,
    /// Data-parallel runs average the probe's gradients too, so its replicas stay identical.
    parallel: Option<DataParallel>,
}

impl OnlineProbe {
    /// Builds the classifier under `path` (variables `probe.weight`, `probe.bias` in checkpoints),
    /// initialized as PyTorch's `nn.Linear`.
    pub fn new(path: &nn::Path, dim: i64, classes: i64, lr: f64) -> Self {
        let classifier = byol::nn::linear(path, dim, classes);
        Self {
            classifier,
            lr,
            correct: Tensor::zeros([], (Kind::Int64, path.device())),
            seen: 0,
            parallel: None,
        }
    }

    /// Averages the probe's gradients over the processes of `parallel` from now on.
    pub fn synchronize(&mut self, parallel: DataParallel) {
        self.parallel = Some(parallel);
    }

    /// One SGD step of cross-entropy on `embeddings` (already detached) and `labels`.
    pub fn train_step(&mut self, embeddings: &Tensor, labels: &Tensor) {
        let logits = self.classifier.forward(&embeddings.to_kind(Kind::Float));
        let loss = logits.cross_entropy_for_logits(labels);
        for p in [&self.classifier.ws, self.classifier.bs.as_ref().expect("bias")] {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        if let Some(parallel) = &self.parallel {
            let parameters = [
                self.classifier.ws.shallow_clone(),
                self.classifier.bs.as_ref().expect("bias").shallow_clone(),
            ];
            // The training step's all-reduce carries the stop requests, not this one.
            parallel
                .all_reduce_gradients(&parameters, &loss, false, 0.0)
                .unwrap_or_else(|e| panic!("online probe: {e:#}"));
        }
        tch::no_grad(|| {
            for p in [&self.classifier.ws, self.classifier.bs.as_ref().expect("bias")] {
                let _ = p.shallow_clone().g_sub_(&(p.grad() * self.lr));
            }
            self.correct += logits.argmax(1, false).eq_tensor(labels).sum(Kind::Int64);
        });
        self.seen += labels.size()[0];
    }

    /// Top-1 accuracy on held-out `embeddings` and their `labels` (no learning).
    pub fn accuracy_on(&self, embeddings: &Tensor, labels: &Tensor) -> f64 {
        tch::no_grad(|| {
            let predicted = self
                .classifier
                .forward(&embeddings.to_kind(Kind::Float))
                .argmax(1, false);
            predicted
                .eq_tensor(labels)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        })
    }

    /// Training accuracy since the last call (None when nothing was seen).
    pub fn take_accuracy(&mut self) -> Option<f64> {
        if self.seen == 0 {
            return None;
        }
        let accuracy = self.correct.int64_value(&[]) as f64 / self.seen as f64;
        let _ = self.correct.zero_();
        self.seen = 0;
        Some(accuracy)
    }
}
