mod decide;
pub use decide::*;
