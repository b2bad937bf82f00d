//! Why a checkpoint cannot become an integer model, or why an exported model could not be
//! compared with its checkpoint's integer simulation.

/// An error of [`super::convert`], [`super::simulate`] or [`super::validate::compare`]; each
/// names the layer it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("{layer}: full-precision weights cannot be exported (train with --bits 2)")]
    FullPrecision { layer: String },
    #[error("{layer}: no BatchNorm")]
    NoBatchNorm { layer: String },
    /// `what` is the tensor that has no quantization scale: its input, output or shortcut.
    #[error("{layer}: its {what} is not quantized")]
    NotQuantized { layer: String, what: &'static str },
    #[error("{layer}: a conv without ReLU must feed a residual add")]
    NoResidualAdd { layer: String },
    #[error("{layer}: requantisation value {value} does not fit int32")]
    Requantisation { layer: String, value: f64 },
    #[error("{layer}: {bits}-bit weights cannot be exported (the engines run 2- and 8-bit layers)")]
    Bits { layer: String, bits: u8 },
    #[error("{layer}: {source}")]
    Pack { layer: String, source: crate::engine::EngineError },
    /// A layer reads signed codes (a linear bottleneck or an add without ReLU) in a way whose
    /// zero point the integer form cannot fold (`docs/quantization.md`, "Signed codes").
    #[error("{layer}: reads the signed codes of {source_layer}, {why}")]
    SignedInput { layer: String, source_layer: String, why: &'static str },
    #[error("{layer}: no integer parameters")]
    NoIntegerParameters { layer: String },
    #[error("{layer}: no residual multiplier")]
    NoResidualMultiplier { layer: String },
    #[error("{layer}: read before it was computed (the network's layers are out of order)")]
    ReadBeforeComputed { layer: String },
    #[error("the checkpoint and the model file describe different networks")]
    DifferentNetworks,
    #[error("{layer}: the engine produced no output")]
    NoEngineOutput { layer: String },
    #[error("{layer}: the engine's output has {engine} values, the simulation's {simulation}")]
    OutputLength { layer: String, engine: usize, simulation: usize },
    #[error("the checkpoint's float model: {0}")]
    Model(#[from] crate::models::ModelError),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    #[error("model header: {0}")]
    Header(#[from] serde_json::Error),
}
