/**
 * The file store's on-disk format, alone: names, the meta file's encoding, and the checks a meta
 * must pass before anything in it is used. No disk: paths are only strings here.
 */
import { describe, expect, test } from "bun:test"
import { join } from "node:path"
import { sha256 } from "./bytes.ts"
import {
  Broken,
  bodyFileNamed,
  entryMetaOf,
  FORMAT_DIR,
  KEY_DIR_NAME,
  META_NAME,
  META_SUFFIX,
  metaFileText,
  parseMetaFile,
  SHARD_NAME,
  variantIdOf,
  variantOfBody,
  writeId,
} from "./file-format.ts"
import type { EntryMeta } from "./store.ts"

const KEY = "GET https://example.test/a"

function meta(overrides: Partial<EntryMeta> = {}): EntryMeta {
  return {
    status: 200,
    headers: [
      ["content-type", "text/plain"],
      ["set-cookie", "a=1"],
      ["set-cookie", "b=2"],
    ],
    vary: { "accept-language": "en" },
    responseTime: 1_000,
    deleteAt: 601_000,
    initialAgeMs: 0,
    freshMs: 600_000,
    staleWhileRevalidateMs: 0,
    staleIfErrorMs: 0,
    mustRevalidate: false,
    noCache: false,
    etag: '"v1"',
    lastModified: null,
    ...overrides,
  }
}

/** Where the store puts a variant's meta: `v1/<shard>/<sha256(key)>/<variant>.meta`. */
function metaPathOf(key: string, vary: EntryMeta["vary"]): string {
  const keyHash = sha256(key)
  return join("/cache", FORMAT_DIR, keyHash.slice(0, 2), keyHash, variantIdOf(key, vary) + META_SUFFIX)
}

/** A meta file as the store writes it, with fields of its JSON replaced. */
function metaText(overrides: Record<string, unknown> = {}, entry = meta()): string {
  const body = { bodyFile: `${variantIdOf(KEY, entry.vary)}.${writeId()}.body`, size: 5, sha256: sha256("hello") }
  return JSON.stringify({ ...JSON.parse(metaFileText(KEY, body, entry)), ...overrides })
}

describe("names", () => {
  test("a key's directory is its sha256 under a shard of its first two hex digits", () => {
    const hash = sha256(KEY)
    expect(hash).toMatch(KEY_DIR_NAME)
    expect(hash.slice(0, 2)).toMatch(SHARD_NAME)
  })

  test("a variant id depends on the key and the Vary selection; a body's name leads back to it", () => {
    const en = variantIdOf(KEY, { "accept-language": "en" })
    expect(variantIdOf(KEY, { "accept-language": "fr" })).not.toBe(en)
    expect(variantIdOf("GET https://example.test/b", { "accept-language": "en" })).not.toBe(en)
    expect(`${en}${META_SUFFIX}`).toMatch(META_NAME)
    expect(variantOfBody(`${en}.${writeId()}.body`)).toBe(en)
    for (const name of [`${en}.body`, `${en}.${writeId()}.body.tmp`, `../${en}.${writeId()}.body`, "passwd"])
      expect(variantOfBody(name)).toBeUndefined()
  })
})

describe("meta files", () => {
  test("what the store writes reads back as the same EntryMeta (two Set-Cookie stay two)", () => {
    const entry = meta({ tags: ["product-1"] })
    const file = parseMetaFile(metaText({}, entry), metaPathOf(KEY, entry.vary))
    expect(file.key).toBe(KEY)
    expect(entryMetaOf(file)).toEqual(entry)
  })

  test("an entry written before deleteAt existed is kept until evicted; fields the EntryMeta has not are left out", () => {
    const file = parseMetaFile(metaText({ deleteAt: undefined, unknownField: 1 }), metaPathOf(KEY, meta().vary))
    const read = entryMetaOf(file)
    expect(read.deleteAt).toBe(Number.MAX_SAFE_INTEGER)
    expect(read).not.toHaveProperty("unknownField")
    expect(read).not.toHaveProperty("bodyFile")
  })

  test.each([
    ["not JSON", "{", "its meta is not JSON"],
    ["not an object", "[]", "its meta is not a JSON object"],
    ["another format", metaText({ format: 2 }), "its format is not 1"],
    ["a status no response can carry", metaText({ status: 600 }), "its status is not an integer in 200-599"],
    ["a header name that is no token", metaText({ headers: [["bad name", "x"]] }), "its headers is not"],
    ["a header value with a line break", metaText({ headers: [["x", "a\r\nb"]] }), "its headers is not"],
    ["a Vary selection that is no object", metaText({ vary: ["x"] }), "its vary is not"],
    ["a size that is no byte count", metaText({ size: -1 }), "its size is not a byte count"],
    ["a digest that is no sha256", metaText({ sha256: "abc" }), "its sha256 is not absent or 64 hex digits"],
    ["tags that are not strings", metaText({ tags: [1] }), "its tags is not absent or a list of strings"],
    [
      "another key than its directory's",
      metaText({ key: "GET https://example.test/other" }),
      "its key is not the one its directory is named for",
    ],
    ["another variant's body", metaText({ bodyFile: `${"0".repeat(64)}.${writeId()}.body` }), "its body file is not one of its variant's"],
  ])("a meta with %s is Broken", (_, text, reason) => {
    const parse = () => parseMetaFile(text, metaPathOf(KEY, meta().vary))
    expect(parse).toThrow(Broken)
    expect(parse).toThrow(reason)
  })

  test("a meta under another variant's name is Broken", () => {
    expect(() => parseMetaFile(metaText(), metaPathOf(KEY, { "accept-language": "fr" }))).toThrow(
      "its key and Vary selection are not those its name was made from",
    )
  })

  test("the body a meta names is found however broken the rest is, and none in what is not JSON", () => {
    const bodyFile = `${variantIdOf(KEY, meta().vary)}.abcdef012345.body`
    expect(bodyFileNamed(metaText({ bodyFile, status: "broken" }))).toBe(bodyFile)
    expect(bodyFileNamed("{")).toBeUndefined()
    expect(bodyFileNamed('{"bodyFile": 1}')).toBeUndefined()
  })
})
