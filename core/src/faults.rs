//! Panics on purpose, for the tests that prove a panic is contained: a
//! test arms a named point (optionally only for subjects containing a
//! needle, such as a URL), and the next passes through it panic. Nothing
//! but a test arms a point; an unarmed point costs one relaxed load, so
//! the points stay in release builds and the tests exercise the code that
//! ships.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

static ANY_ARMED: AtomicBool = AtomicBool::new(false);
static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Armed {
    point: &'static str,
    /// Only subjects containing this panic (`None`: every pass).
    needle: Option<String>,
    times: usize,
}

/// Makes the next `times` passes through point `name` panic.
#[doc(hidden)]
pub fn arm(name: &'static str, times: u32) {
    push(name, None, times as usize);
}

/// Makes the next `times` passes through point `name` with a subject
/// containing `needle` panic.
#[doc(hidden)]
pub fn arm_for(name: &'static str, needle: &str, times: usize) {
    push(name, Some(needle.to_string()), times);
}

/// Disarms what [`arm_for`] planned for `needle` at `name`.
#[doc(hidden)]
pub fn disarm_for(name: &'static str, needle: &str) {
    armed().retain(|a| !(a.point == name && a.needle.as_deref() == Some(needle)));
}

fn push(point: &'static str, needle: Option<String>, times: usize) {
    armed().push(Armed {
        point,
        needle,
        times,
    });
    ANY_ARMED.store(true, Ordering::Release);
}

fn armed() -> std::sync::MutexGuard<'static, Vec<Armed>> {
    ARMED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A place a test may make panic.
#[inline]
pub fn point(name: &'static str) {
    if ANY_ARMED.load(Ordering::Relaxed) && take(name, "") {
        panic!("injected panic at {name}");
    }
}

/// A place a test may make panic, for some subjects only.
#[inline]
pub fn point_for(name: &'static str, subject: &str) {
    if ANY_ARMED.load(Ordering::Relaxed) && take(name, subject) {
        panic!("injected panic at {name}");
    }
}

fn take(name: &str, subject: &str) -> bool {
    let mut armed = armed();
    let Some(i) = armed.iter().position(|a| {
        a.point == name && a.times > 0 && a.needle.as_deref().is_none_or(|n| subject.contains(n))
    }) else {
        return false;
    };
    armed[i].times -= 1;
    if armed[i].times == 0 {
        armed.remove(i);
    }
    true
}

/// What a caught panic said.
pub fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
