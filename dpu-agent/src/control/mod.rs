//! The control session and enrollment: the mTLS gRPC stream to the controller
//! (`session`), which endpoint it tries next (`rotation`), and the node identity
//! and certificate enrollment (`enroll`).

pub mod enroll;
pub mod rotation;
pub mod session;
