//! Registry client: references, auth, HTTP/2, ranges (issue #4: not built yet).
