//! VADER sentiment (stub).
