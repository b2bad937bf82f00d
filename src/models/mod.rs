//! tch models built from the layer graph.
