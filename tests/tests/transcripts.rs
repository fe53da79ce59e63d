//! Every transcript case under testdata/, per helper.

use cgp_tests::{
    bin,
    transcript::{run_all, run_all_with},
};

#[test]
fn runtime_cases_on_the_probe_helper() {
    run_all(&bin("probe_helper"), "runtime");
}

#[test]
fn runtime_cases_with_answers_on_the_first_poll() {
    run_all_with(&bin("probe_helper"), &["--inline"], "runtime");
}

#[test]
fn runtime_cases_on_parallel_dispatchers() {
    run_all_with(&bin("probe_helper"), &["--parallel"], "runtime");
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
