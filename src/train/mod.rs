//! Training loops (stub).
