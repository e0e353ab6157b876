//! The optimizer seam, defined in `byol` with the other plugin traits so that optimizer plugins
//! need not depend on the runner; re-exported under the name the runner uses.

pub use byol::optimizer::{util, Direction, MomentumRule, MomentumSgd, NamedParameter, Optimizer, OptimizerSpec};
