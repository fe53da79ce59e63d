//! cgp-balancer as a whole binary: transcript cases (IPVS dry-run, grammar,
//! failing back ends).

use cgp_tests::{bin, transcript::run_all};

#[test]
fn balancer_transcripts() {
    run_all(&bin("cgp-balancer"), "balancer");
}
