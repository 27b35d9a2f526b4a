//! kernels: language kernels for execd's stateful code contexts (Python via a
//! pyo3 module, JavaScript/TypeScript, Bash, Java, Go), without Jupyter.
//!
//! Nothing is implemented yet; a later issue (code contexts) fills this crate.
