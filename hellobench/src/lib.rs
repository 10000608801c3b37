//! The HelloBench startup harness (issue #7: not built yet).
