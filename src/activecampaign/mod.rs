//! activecampaign (to be written).
