//! Signal strength on the two scales the managers report: dBm (wpa_supplicant) and a 0–100
//! quality (NetworkManager). Both directions use NetworkManager's linear mapping from one pair of
//! end points, so a network reads the same through either manager and a quality converted back
//! to dBm lands within 1 dB of where it came from.

/// The signal at which quality reaches 100.
const BEST_DBM: i16 = -40;

/// The signal at which quality reaches 0.
const WORST_DBM: i16 = -100;

/// wpa_supplicant's signal level in dBm as a 0–100 quality, NetworkManager's mapping so both
/// managers agree: -40 dBm or stronger is 100, -100 dBm or weaker is 0, linear between. A value
/// of 0 or more is a driver already reporting quality, clamped to 100.
pub fn dbm_to_percent(dbm: i32) -> u8 {
    if dbm >= 0 {
        return dbm.min(100) as u8;
    }
    let below_best = i32::from(BEST_DBM) - dbm.clamp(WORST_DBM.into(), BEST_DBM.into());
    (100 - below_best * 100 / i32::from(BEST_DBM - WORST_DBM)) as u8
}

/// A 0–100 quality as dBm, the inverse of [`dbm_to_percent`] on its linear range: 100 is -40 dBm,
/// 50 is -70 dBm, 0 is -100 dBm, rounded to the nearest dBm. Above 100 counts as 100.
pub fn percent_to_dbm(percent: u8) -> i16 {
    let percent = i16::from(percent.min(100));
    WORST_DBM + (percent * (BEST_DBM - WORST_DBM) + 50) / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbm_maps_like_network_manager() {
        assert_eq!(dbm_to_percent(-30), 100);
        assert_eq!(dbm_to_percent(-40), 100);
        assert_eq!(dbm_to_percent(-70), 50);
        assert_eq!(dbm_to_percent(-85), 25);
        assert_eq!(dbm_to_percent(-100), 0);
        assert_eq!(dbm_to_percent(-120), 0);
        assert_eq!(dbm_to_percent(60), 60);
        assert_eq!(dbm_to_percent(180), 100);
    }

    #[test]
    fn percent_maps_back_onto_the_same_line() {
        assert_eq!(percent_to_dbm(100), -40);
        assert_eq!(percent_to_dbm(50), -70);
        assert_eq!(percent_to_dbm(25), -85);
        assert_eq!(percent_to_dbm(0), -100);
        assert_eq!(percent_to_dbm(u8::MAX), -40);
    }

    #[test]
    fn every_percent_survives_the_round_trip_within_1() {
        for p in 0..=100u8 {
            let dbm = percent_to_dbm(p);
            let back = dbm_to_percent(dbm.into());
            assert!(back.abs_diff(p) <= 1, "{p}% -> {dbm} dBm -> {back}%");
        }
    }

    #[test]
    fn every_dbm_in_range_survives_the_round_trip_within_1() {
        for dbm in WORST_DBM..=BEST_DBM {
            let p = dbm_to_percent(dbm.into());
            let back = percent_to_dbm(p);
            assert!(back.abs_diff(dbm) <= 1, "{dbm} dBm -> {p}% -> {back} dBm");
        }
    }
}
