//! Every transcript case under testdata/, per helper.

use cgp_tests::{bin, transcript::run_all};

#[test]
fn runtime_cases_on_the_probe_helper() {
    run_all(&bin("probe_helper"), "runtime");
}

#[test]
fn filter_cases() {
    run_all(&bin("cgp-filter"), "filter");
}

#[test]
fn banner_cases() {
    run_all(&bin("cgp-banner"), "banner");
}

#[test]
fn auth_cases() {
    run_all(&bin("cgp-auth"), "auth");
}
