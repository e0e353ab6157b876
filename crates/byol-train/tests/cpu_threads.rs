//! `run.threads = 0` means libtorch's own thread count, also after a run in the same process
//! (a sweep's trials) set another. Its own test binary: the thread count is the process's.

use byol_train::train::set_cpu_threads;

#[test]
fn threads_0_restores_libtorch_s_default_after_another_count() {
    let default = tch::get_num_threads();
    set_cpu_threads(default as usize + 1);
    assert_eq!(tch::get_num_threads(), default + 1);
    set_cpu_threads(0);
    assert_eq!(tch::get_num_threads(), default, "back to libtorch's default");
    set_cpu_threads(1);
    assert_eq!(tch::get_num_threads(), 1);
    set_cpu_threads(0);
    assert_eq!(tch::get_num_threads(), default);
}
