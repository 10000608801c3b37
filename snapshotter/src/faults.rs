//! Panics on purpose, for the tests that prove a panic is contained: a
//! test arms a named point, and the next pass through it panics. Nothing
//! but a test calls [`arm`]; an unarmed point costs one relaxed load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static ANY_ARMED: AtomicBool = AtomicBool::new(false);
static ARMED: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());

/// Makes the next `times` passes through point `name` panic.
#[doc(hidden)]
pub fn arm(name: &'static str, times: u32) {
    ARMED.lock().expect("faults").push((name, times));
    ANY_ARMED.store(true, Ordering::Release);
}

/// A place a test may make panic.
#[inline]
pub fn point(name: &'static str) {
    if ANY_ARMED.load(Ordering::Relaxed) && take(name) {
        panic!("injected panic at {name}");
    }
}

fn take(name: &str) -> bool {
    let mut armed = ARMED.lock().expect("faults");
    let Some(i) = armed.iter().position(|(n, _)| *n == name) else {
        return false;
    };
    armed[i].1 -= 1;
    if armed[i].1 == 0 {
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
