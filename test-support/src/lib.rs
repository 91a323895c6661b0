//! Fixtures that the tests of several crates share, kept once.
//!
//! Only ever a dev-dependency: nothing here reaches a shipped binary. It knows
//! none of the workspace's own types, so any crate can use it in its unit tests
//! without two copies of itself in one test binary. Fakes of a crate's own
//! traits live beside the trait behind a `testkit` feature instead
//! (`dpu_agent::reconcile::backend::testkit`, `openflow::testkit`,
//! `dpu_listen::flood`), and the lab's machinery (namespaces, private OVS, the
//! root and Open vSwitch check) is `dpu-lab`'s, which the demo and the
//! benchmark use too.

pub mod etcd;
pub mod pki;
pub mod props;
