//! Quantization-aware training.
