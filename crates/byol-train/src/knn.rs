//! Weighted kNN classification of embeddings (Wu et al. 2018; the monitor of solo-learn and
//! lightly): cosine similarity on L2-normalized features, the k nearest bank entries vote with
//! weight exp(sim / T), computed as exp((sim - nearest sim) / T): the same vote scaled by one
//! factor per query, which ranks the classes the same and cannot overflow (exp(1 / T) does in
//! float32 below T = 0.0113, and every vote became NaN).

use tch::{Kind, Tensor};

/// Top-1 and top-5 accuracy of weighted kNN.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnnAccuracy {
    pub top1: f64,
    /// None with 5 classes or fewer (see [`has_top5`]).
    #[serde(default)]
    pub top5: Option<f64>,
}

/// Whether top-5 accuracy says anything: with 5 classes or fewer every label is among the top
/// 5, and top-5 would be 100% whatever the features.
pub fn has_top5(classes: i64) -> bool {
    classes > 5
}

/// Class scores `[Q, classes]` of `queries` against the labelled `bank`.
pub fn knn_scores(
    queries: &Tensor,
    bank: &Tensor,
    bank_labels: &Tensor,
    classes: i64,
    k: i64,
    temperature: f64,
) -> Tensor {
    let q = normalize(queries);
    let b = normalize(bank);
    let k = k.min(b.size()[0]);
    let similarity = q.matmul(&b.tr());
    let (top_sim, top_idx) = similarity.topk(k, 1, true, true);
    let top_labels = bank_labels.index_select(0, &top_idx.flatten(0, -1)).view_as(&top_idx);
    let nearest = top_sim.narrow(1, 0, 1);
    let weights = ((&top_sim - nearest) / temperature).exp();
    let one_hot = top_labels.one_hot(classes).to_kind(Kind::Float);
    (one_hot * weights.unsqueeze(-1)).sum_dim_intlist([1i64].as_slice(), false, None)
}

/// Accuracy of [`knn_scores`] against `query_labels`, computed in chunks of queries.
pub fn knn_accuracy(
    queries: &Tensor,
    query_labels: &Tensor,
    bank: &Tensor,
    bank_labels: &Tensor,
    classes: i64,
    k: i64,
    temperature: f64,
) -> KnnAccuracy {
    let n = queries.size()[0];
    let (mut top1, mut top5) = (0i64, 0i64);
    let chunk = 1024;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min((n - start) as usize) as i64;
        let scores = knn_scores(
            &queries.narrow(0, start, len),
            bank,
            bank_labels,
            classes,
            k,
            temperature,
        );
        let labels = query_labels.narrow(0, start, len).unsqueeze(1);
        // Stable: classes that tie (most often at 0, no neighbour voted for them) rank by class
        // index, the same on every device, so top-5 never depends on the sort's algorithm.
        let ranked = scores.argsort_stable(true, 1, true);
        top1 += ranked
            .narrow(1, 0, 1)
            .eq_tensor(&labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
        top5 += ranked
            .narrow(1, 0, 5.min(classes))
            .eq_tensor(&labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    KnnAccuracy {
        top1: top1 as f64 / n as f64,
        top5: has_top5(classes).then(|| top5 as f64 / n as f64),
    }
}

fn normalize(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    &x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12)
}
