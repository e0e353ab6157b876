//! libtorch errors inside a training step: tch raises them as panics; they are caught here and
//! turned into messages that say what to do.

thread_local! {
    static IN_GUARDED_STEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a training step, catching the panics tch raises for libtorch errors (out of memory, a
/// lost peer) without the default hook printing them: [`explain_panic`] reports them instead.
pub fn guarded<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_GUARDED_STEP.with(|g| g.get()) {
                default(info);
            }
        }));
    });
    IN_GUARDED_STEP.with(|g| g.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_GUARDED_STEP.with(|g| g.set(false));
    outcome
}

/// `byol.embed(images)` with a failure of the network (a TorchScript module raising on some
/// batches, a libtorch error) as an error naming the batch, not a panic.
pub fn embed_guarded(byol: &byol::Byol, images: &tch::Tensor) -> anyhow::Result<tch::Tensor> {
    guarded(|| byol.embed(images)).map_err(|panic| {
        anyhow::anyhow!(
            "embedding a batch of {} images failed: {}",
            images.size().first().copied().unwrap_or(0),
            panic_message(panic.as_ref())
        )
    })
}

/// The text of a panic payload (tch panics with the libtorch message), without the `unwrap` that
/// raised it: ``called `Result::unwrap()` on an `Err` value: Torch("...")`` is the message inside.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".into());
    match text
        .strip_prefix("called `Result::unwrap()` on an `Err` value: Torch(\"")
        .and_then(|inner| inner.strip_suffix("\")"))
    {
        Some(inner) => unescape_debug(inner),
        None => text,
    }
}

/// A string as Rust's `{:?}` wrote it, inside its quotes, read back.
fn unescape_debug(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let code: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                out.extend(u32::from_str_radix(&code, 16).ok().and_then(char::from_u32));
            }
            Some(other) => out.push(other), // \\, \", \'
            None => out.push('\\'),
        }
    }
    out
}

/// Turns a libtorch error raised inside a step into a message.
pub fn explain_panic(panic: Box<dyn std::any::Any + Send>, batch: usize, accumulate: usize) -> anyhow::Error {
    let message = panic_message(panic.as_ref());
    let first_line = message.lines().next().unwrap_or_default();
    if is_lost_peer(&message) {
        peer_gone(first_line)
    } else if is_out_of_memory(&message) {
        anyhow::anyhow!(
            "the device ran out of memory with schedule.batch_size = {batch} (accumulate = {accumulate}): \
             lower the batch size, or raise schedule.accumulate to split each batch into micro-batches, \
             or use a lower run.precision (\"bf16\"; \"fp16\" on a GPU)\n({first_line})"
        )
    } else if message.contains("modified by an inplace operation") {
        // The same view goes through the online and the target network: a forward that writes
        // into its input changes what the other's backward needs.
        anyhow::anyhow!(
            "training step failed: a tensor that the backward needs was changed in place, most likely by \
             the backbone's forward writing into its input (a TorchScript module's x.mul_(2) or x += 1): make \
             that operation out of place (x = x * 2)\n({first_line})"
        )
    } else {
        anyhow::anyhow!("training step failed: {first_line}")
    }
}

/// Whether a collective's message says that a peer's connection went away.
fn is_lost_peer(message: &str) -> bool {
    [
        "Connection reset by peer",
        "Connection closed by peer",
        "Broken pipe",
        "gloo/transport",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Whether libtorch's `message` says an allocation failed: a GPU's ("CUDA out of memory") or the
/// CPU's ("DefaultCPUAllocator: can't allocate memory").
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory") || message.contains("can't allocate memory")
}

/// An error a training step returned (a collective's among them), with a lost data-parallel
/// peer said as [`explain_panic`] says it.
pub fn explain_error(error: anyhow::Error) -> anyhow::Error {
    let message = format!("{error:#}");
    if is_lost_peer(&message) {
        peer_gone(&message)
    } else {
        error
    }
}

/// A data-parallel peer is gone (killed, crashed): this process cannot go on; `detail` is the
/// collective's own message.
pub fn peer_gone(detail: &str) -> anyhow::Error {
    // A wait that timed out: the peer may be alive and still busy.
    if detail.contains("Timed out") || detail.contains("timed out") {
        return anyhow::anyhow!(
            "another process of this data-parallel job did not answer within [distributed] timeout_s: it \
             stopped, or it is still busy (writing a large checkpoint, evaluating) past that time. If it is \
             busy, raise distributed.timeout_s; if it stopped, its own error says why, and a job started again \
             resumes from the last checkpoint\n({})",
            detail.lines().next().unwrap_or_default()
        );
    }
    anyhow::anyhow!(
        "another process of this data-parallel job stopped, so this one cannot go on. If that process \
         failed, its own error says why (the same failure would come back); if it was killed, start the \
         job again (all processes) and it resumes from the last checkpoint\n({})",
        detail.lines().next().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn a_tch_unwrap_gives_the_libtorch_message_alone() {
        let panic = super::guarded(|| tch::Tensor::zeros([2], tch::kind::FLOAT_CPU).f_view([3]).unwrap()).unwrap_err();
        let message = panic_message(panic.as_ref());
        assert!(
            message.starts_with("shape '[3]' is invalid for input of size 2"),
            "{message}"
        );
        assert!(!message.contains("unwrap") && !message.contains("Torch("), "{message}");
        let plain: Box<dyn std::any::Any + Send> = Box::new("out of memory".to_string());
        assert_eq!(panic_message(plain.as_ref()), "out of memory");
        let original = "C:\\new\t\"quoted\"\nline \u{7f} é";
        let debug: Box<dyn std::any::Any + Send> = Box::new(format!(
            "called `Result::unwrap()` on an `Err` value: {:?}",
            tch::TchError::Torch(original.to_string())
        ));
        assert_eq!(panic_message(debug.as_ref()), original);
    }

    /// The CPU's allocation failure, as libtorch raises it, is told as the GPU's is: with the
    /// batch size and what to change.
    #[test]
    fn the_cpus_out_of_memory_names_the_batch_and_what_to_do() {
        let panic = super::guarded(|| tch::Tensor::zeros([1 << 50], tch::kind::FLOAT_CPU)).unwrap_err();
        let error = super::explain_panic(panic, 256, 1).to_string();
        assert!(
            error.starts_with("the device ran out of memory with schedule.batch_size = 256 (accumulate = 1)")
                && error.contains("raise schedule.accumulate")
                && error.contains("can't allocate memory"),
            "{error}"
        );
    }

    /// A backward that finds its input changed in place, as libtorch says it when a forward
    /// writes into the view it was given.
    #[test]
    fn an_input_changed_in_place_is_told_with_what_to_do() {
        let panic = super::guarded(|| {
            let w = tch::Tensor::ones([3], tch::kind::FLOAT_CPU).set_requires_grad(true);
            let x = tch::Tensor::ones([3], tch::kind::FLOAT_CPU);
            let y = (&w * &x).sum(tch::Kind::Float);
            let _ = x.shallow_clone().g_mul_scalar_(2);
            y.backward();
        })
        .unwrap_err();
        let message = super::explain_panic(panic, 32, 1).to_string();
        assert!(
            message.contains("a tensor that the backward needs was changed in place")
                && message.contains("modified by an inplace operation"),
            "{message}"
        );
    }
}
