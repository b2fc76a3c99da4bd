//! Bag-of-words logistic-regression sentiment classifier (stub).
