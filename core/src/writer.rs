//! tar → eStargz (placeholder replaced below).
