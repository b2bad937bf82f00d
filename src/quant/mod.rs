//! Quantizers as tch modules: PACT, SAWB, LSQ.
