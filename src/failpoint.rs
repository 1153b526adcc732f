//! Named steps where the fault tests make the agent die exactly as a SIGKILL would.
//!
//! Built only with the `failpoints` cargo feature; release builds compile every point out.
//! A test sets `FAILPOINTS=<name>=return` (tikv's fail-rs syntax) in the agent's environment.

/// Kills the process on the spot: no destructor, no cleanup, no flush beyond this line.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub fn die(name: &str) -> ! {
    tracing::warn!(failpoint = name, "failpoint reached: killing the agent");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    unreachable!("SIGKILL cannot be caught or ignored")
}

/// `crash_point!("name")`: with the feature on and `FAILPOINTS=name=return`, the agent dies
/// here; otherwise nothing.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| $crate::failpoint::die($name))
    };
}
