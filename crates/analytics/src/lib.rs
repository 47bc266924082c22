//! DEBS 2014 smart-grid analytics.
