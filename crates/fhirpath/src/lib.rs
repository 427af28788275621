//! placeholder (the FHIRPath helper replaces this file)
