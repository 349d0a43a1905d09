/**
 * HTTP-date (RFC 9110 §5.6.7): the one parser for Date, Expires, Last-Modified and
 * If-Modified-Since. The runtime's `Date.parse` is never used for them: it accepts `UTC`,
 * numeric zones, ISO 8601, missing commas and one-digit hours, all of which HTTP calls invalid.
 */

const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
const DAY_NAMES = new Set(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])
const LONG_DAY_NAMES = new Set(["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])

// The three forms RFC 9110 §5.6.7 allows, to the character (`\d` is an ASCII digit):
// IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT"
const IMF_FIXDATE =
  /^(?<dayName>[A-Za-z]{3}), (?<day>\d{2}) (?<month>[A-Za-z]{3}) (?<year>\d{4}) (?<hour>\d{2}):(?<minute>\d{2}):(?<second>\d{2}) GMT$/
// the obsolete RFC 850 form, "Sunday, 06-Nov-94 08:49:37 GMT"
const RFC850_DATE =
  /^(?<dayName>[A-Za-z]{6,9}), (?<day>\d{2})-(?<month>[A-Za-z]{3})-(?<year>\d{2}) (?<hour>\d{2}):(?<minute>\d{2}):(?<second>\d{2}) GMT$/
// ANSI C's asctime() form, "Sun Nov  6 08:49:37 1994" (a one-digit day after a second space)
const ASCTIME_DATE =
  /^(?<dayName>[A-Za-z]{3}) (?<month>[A-Za-z]{3}) (?<day>\d{2}| \d) (?<hour>\d{2}):(?<minute>\d{2}):(?<second>\d{2}) (?<year>\d{4})$/

type DateFields = Record<"dayName" | "day" | "month" | "year" | "hour" | "minute" | "second", string>

/**
 * An HTTP-date in ms since the epoch, or undefined when the value is none of the three forms or
 * names a day or time that does not exist. Day and month names match in any case (§5.6.7 asks
 * recipients to be robust); `GMT` must be as written. `now` places an RFC 850 two-digit year.
 */
export function parseHttpDate(value: string | null, now: number): number | undefined {
  if (value === null) return undefined
  const match = IMF_FIXDATE.exec(value) ?? RFC850_DATE.exec(value) ?? ASCTIME_DATE.exec(value)
  if (!match) return undefined
  const fields = match.groups as DateFields // every group of each form takes part in a match
  const dayNames = fields.dayName.length === 3 ? DAY_NAMES : LONG_DAY_NAMES
  const month = MONTHS.indexOf(fields.month.toLowerCase())
  if (!dayNames.has(fields.dayName.toLowerCase()) || month === -1) return undefined
  const [day, hour, minute, second] = [fields.day, fields.hour, fields.minute, fields.second].map(Number) as [
    number,
    number,
    number,
    number,
  ]
  // RFC 9110 §5.6.7: day 01-31, hour 00-23, minute 00-59, second 00-60 (a leap second).
  if (day < 1 || hour > 23 || minute > 59 || second > 60) return undefined
  const dayStart = fields.year.length === 4 ? utc(Number(fields.year), month, day) : twoDigitYear(Number(fields.year), month, day, now)
  // A day the month does not have (31 Apr, 29 Feb 2026) would roll into the next month: invalid.
  if (new Date(dayStart).getUTCMonth() !== month) return undefined
  return dayStart + ((hour * 60 + minute) * 60 + second) * 1000
}

/** Midnight of a day, like Date.UTC without its mapping of years 0-99 to 1900-1999 ("0094" is 94). */
function utc(year: number, month: number, day: number): number {
  const date = new Date(0)
  date.setUTCFullYear(year, month, day)
  return date.getTime()
}

/**
 * RFC 9110 §5.6.7: a two-digit year that appears to be more than 50 years in the future is the
 * most recent past year with the same last two digits; so the latest year ending in those
 * digits whose day begins at most 50 years after `now`.
 */
function twoDigitYear(digits: number, month: number, day: number, now: number): number {
  const limit = new Date(now)
  limit.setUTCFullYear(limit.getUTCFullYear() + 50)
  const year = limit.getUTCFullYear() - (limit.getUTCFullYear() % 100) + digits
  const ms = utc(year, month, day)
  return ms <= limit.getTime() ? ms : utc(year - 100, month, day)
}

/** An HTTP-date in the IMF-fixdate form, the one RFC 9110 §5.6.7 says to send. */
export function formatHttpDate(ms: number): string {
  return new Date(ms).toUTCString()
}
