import Foundation
import XCTest
@testable import RNNTrain

/// Every damaged checkpoint must be refused with one line naming the file, never a crash.
///
/// The corpus is Fixtures/bad-checkpoints (committed; made by scripts/make_bad_checkpoints.py,
/// one file per kind of damage, plus good.safetensors). Each file is replayed through
/// Checkpoint.decode and Checkpoint.read; then good.safetensors is mutated deterministically
/// (every bit flip, truncation, deletion, insertion, and a few thousand seeded random edits) and
/// every mutant must decode or throw Checkpoint.Error. A trap anywhere kills the test process,
/// which fails the run. The open-ended search is scripts/fuzz_checkpoints.sh (libFuzzer), not run here.
final class BadCheckpointTests: XCTestCase {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/bad-checkpoints")

    /// Bad file -> a phrase its error message must contain. Add a row with each new file.
    static let expected: [String: String] = [
        // Truncations and tiny files.
        "empty.safetensors": "file too short (0 bytes)",
        "seven-bytes.safetensors": "file too short (7 bytes)",
        "truncated-in-length.safetensors": "file too short (3 bytes)",
        "truncated-in-header.safetensors": "header length 408 exceeds the file size 212",
        "truncated-in-data.safetensors": "tensor 'rnn.weight_ih_l0': data offsets [68, 80] out of range (data has 74 bytes)",
        // Bit flips.
        "bitflip-data.safetensors": "checksum mismatch",
        "bitflip-header-json.safetensors": "header is not a JSON object",
        "bitflip-header-dtype.safetensors": "unsupported dtype F33",
        "bitflip-header-format.safetensors": "format 'rnn-dp/0' is not supported",
        "bitflip-header-offset.safetensors": "tensor 'head.bias': shape [2] needs 8 bytes, offsets give 9",
        // The header length field.
        "header-length-too-small.safetensors": "header is not a JSON object",
        "header-length-zero.safetensors": "header does not start with '{'",
        "header-length-2pow40.safetensors": "header length 1099511627776 exceeds the file size 496",
        "header-length-2pow64-minus-1.safetensors": "header length 18446744073709551615 exceeds the file size 496",
        "header-length-100MB-plus-1.safetensors": "header length 100000001 exceeds the file size 496",
        // Data offsets.
        "offsets-out-of-range.safetensors": "tensor 'head.bias': data offsets [200, 208] out of range",
        "offsets-end-before-begin.safetensors": "tensor 'head.bias': data offsets [8, 0] out of range",
        "offsets-negative.safetensors": "tensor 'head.bias': data offsets [-8, 0] out of range",
        "offsets-overlap.safetensors": "overlap",
        "offsets-not-integers.safetensors": "tensor 'head.bias': malformed entry",
        "offsets-three-numbers.safetensors": "tensor 'head.bias': malformed entry",
        // Dtypes.
        "dtype-F64.safetensors": "tensor 'x.f64': unsupported dtype F64",
        "dtype-BF16.safetensors": "tensor 'x.bf16': unsupported dtype BF16",
        "dtype-Q4.safetensors": "tensor 'x.q4': unsupported dtype Q4",
        "extra-non-f32-tensor.safetensors": "tensor 'step': unsupported dtype I32",
        // Shapes.
        "shape-mismatch.safetensors": "tensor 'head.weight': shape [2, 2] needs 16 bytes, offsets give 24",
        "shape-negative.safetensors": "tensor 'head.bias': invalid shape [-2]",
        "shape-too-many-dims.safetensors": "tensor 'head.bias': invalid shape",
        "shape-product-overflow.safetensors": "tensor 'head.bias'",
        "shape-byte-count-overflow.safetensors": "tensor 'head.bias': shape [4611686018427387904] is too large",
        "shape-not-a-list.safetensors": "tensor 'head.bias': malformed entry",
        // Header JSON.
        "header-json-array.safetensors": "header does not start with '{'",
        "header-leading-space.safetensors": "header does not start with '{'",
        "header-invalid-utf8.safetensors": "header is not a JSON object",
        "header-unterminated.safetensors": "header is not a JSON object",
        "tensor-entry-not-object.safetensors": "tensor 'head.bias': malformed entry",
        "tensor-entry-missing-dtype.safetensors": "tensor 'head.bias': malformed entry",
        "metadata-not-strings.safetensors": "__metadata__ is not a map of strings",
        // rnn-dp's metadata.
        "missing-format.safetensors": "no 'format' in the metadata",
        "no-metadata.safetensors": "no 'format' in the metadata",
        "format-rnn-dp-999.safetensors": "format 'rnn-dp/999' is not supported",
        "missing-checksum.safetensors": "no checksum in the metadata",
        "checksum-uppercase-hex.safetensors": "checksum mismatch",
        "checksum-other-algorithm.safetensors": "checksum mismatch",
        "trailing-bytes.safetensors": "checksum mismatch",
        // Text from the file inside the message (it must stay one line).
        "format-with-newline.safetensors": "format 'rnn-dp/2\\nrnn-dp/1' is not supported",
        "checksum-with-newline.safetensors": "checksum mismatch",
        "tensor-name-with-newline.safetensors": "tensor 'x\\nrnn-dp: error: fake': unsupported dtype F64",
        "tensor-name-with-unicode-newlines.safetensors": "unsupported dtype F64",
        "dtype-with-newline.safetensors": "tensor 'x.f32': unsupported dtype F32\\n",
    ]
    static let good = "good.safetensors"

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func bytes(_ name: String) throws -> [UInt8] {
        guard let d = FileManager.default.contents(atPath: path(name)) else {
            throw Checkpoint.Error(message: "\(path(name)): missing from the corpus")
        }
        return Array(d)
    }

    /// The *.safetensors files in the corpus directory.
    static func corpus() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".safetensors") }.sorted()
    }

    /// Checks that `error` is a Checkpoint.Error of one line starting with "<name>: ".
    @discardableResult
    func checkError(_ error: Error, name: String, contains phrase: String? = nil, _ what: @autoclosure () -> String,
                    file: StaticString = #filePath, line: UInt = #line) -> String? {
        guard let e = error as? Checkpoint.Error else {
            XCTFail("\(what()): threw \(type(of: error)) (\(error)), not Checkpoint.Error", file: file, line: line)
            return nil
        }
        // One printable line: no line break of any kind (\n, \r, NEL, U+2028...) and no other control
        // character (C0, DEL, C1), which a terminal could act on.
        let broken = e.message.unicodeScalars.first { $0.properties.generalCategory == .control || $0.value == 0x2028 || $0.value == 0x2029 }
        XCTAssertNil(broken, "\(what()): not one printable line: \(e.message.debugDescription)", file: file, line: line)
        XCTAssertTrue(e.message.hasPrefix("\(name): "), "\(what()): does not start with the file name: \(e.message)", file: file, line: line)
        XCTAssertEqual(e.description, e.message, file: file, line: line)
        if let phrase {
            XCTAssertTrue(e.message.contains(phrase), "\(what()): expected '\(phrase)' in: \(e.message)", file: file, line: line)
        }
        return e.message
    }

    // MARK: the committed corpus

    func testCorpusIsComplete() throws {
        let names = try Self.corpus()
        XCTAssertEqual(names.count, Self.expected.count + 1, "files in \(Self.directory.path) (regenerate with scripts/make_bad_checkpoints.py)")
        let want = Set(Self.expected.keys).union([Self.good])
        XCTAssertEqual(Set(names).subtracting(want).sorted(), [], "files without a row in BadCheckpointTests.expected")
        XCTAssertEqual(want.subtracting(names).sorted(), [], "files missing from \(Self.directory.path)")
        for name in names {
            let size = try FileManager.default.attributesOfItem(atPath: Self.path(name))[.size] as? Int ?? -1
            XCTAssertLessThanOrEqual(size, 8192, "\(name) is meant to be small")
        }
    }

    func testEveryBadFileIsRefusedWithOneLineNamingIt() throws {
        for (name, phrase) in Self.expected.sorted(by: { $0.key < $1.key }) {
            guard FileManager.default.fileExists(atPath: Self.path(name)) else { continue }  // reported by testCorpusIsComplete
            let path = Self.path(name)
            let bytes = try Self.bytes(name)
            var decoded: String?
            do {
                _ = try Checkpoint.decode(bytes, name: path)
                XCTFail("\(name): decoded without an error")
            } catch {
                decoded = checkError(error, name: path, contains: phrase, "decode \(name)")
            }
            // Reading the file gives the same message.
            do {
                _ = try Checkpoint.read(path: path)
                XCTFail("\(name): read without an error")
            } catch {
                let read = checkError(error, name: path, contains: phrase, "read \(name)")
                XCTAssertEqual(read, decoded, name)
            }
        }
    }

    func testGoodFileDecodes() throws {
        let path = Self.path(Self.good)
        let file = try Checkpoint.decode(try Self.bytes(Self.good), name: path)
        XCTAssertEqual(try Checkpoint.read(path: path), file)
        XCTAssertEqual(file.tensors.map(\.name), ["head.bias", "head.weight", "rnn.weight_hh_l0", "rnn.weight_ih_l0"])
        XCTAssertEqual(file.tensor("head.bias"), .init(name: "head.bias", shape: [2], values: [0.25, -0.75]))
        XCTAssertEqual(file.tensor("head.weight")?.shape, [2, 3])
        XCTAssertEqual(file.tensor("head.weight")?.values.map(\.bitPattern),
                       ([1.0, -2.5, 3.125, 0.0, -0.0, 1e-3] as [Float]).map(\.bitPattern))
        XCTAssertEqual(file.tensor("rnn.weight_hh_l0")?.values, (0..<9).map { 0.5 * Float($0 - 4) })
        XCTAssertEqual(file.tensor("rnn.weight_ih_l0")?.shape, [3, 1])
        XCTAssertEqual(file.metadata["format"], Checkpoint.format)
        XCTAssertEqual(file.metadata["kind"], "model")
        XCTAssertEqual(file.metadata["checksum"], SafeTensors.dataChecksum(try Self.bytes(Self.good)))
        // The generator lays files out exactly as rnn-dp does.
        let written = try SafeTensors.encode(file.tensors, metadata: file.metadata)
        XCTAssertEqual(written, try Self.bytes(Self.good), "good.safetensors differs from what SafeTensors.encode writes")
    }

    /// The Python generator's checksum (FNV-1a 64 over the data region) is the one Swift writes.
    func testGeneratorChecksumMatchesCheckpointWrite() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-badckpt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try Checkpoint.read(path: Self.path(Self.good))
        var meta = file.metadata
        meta["checksum"] = nil
        meta["format"] = nil
        try Checkpoint.write(path: "\(dir)/x.safetensors", tensors: file.tensors, metadata: meta)
        let bytes = Array(FileManager.default.contents(atPath: "\(dir)/x.safetensors")!)
        XCTAssertEqual(bytes, try Self.bytes(Self.good))
    }

    // MARK: names and messages

    /// A safetensors file from a literal JSON header (padded) and data bytes.
    static func file(header: String, data: [UInt8]) -> [UInt8] {
        var json = Array(header.utf8)
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        return out + json + data
    }

    /// Tensor names come back exactly as stored, whatever their length or characters: only error
    /// messages may escape or shorten them.
    func testTensorNamesRoundTripExactly() throws {
        let long = String(repeating: "encoder.layers.0.", count: 15)
        let names = [long + "weight", long + "bias", "tab\tname", "new\nline", "üñïçødé.λ", "quote\"and\\backslash"]
        let tensors = names.enumerated().map { SafeTensors.Tensor(name: $1, shape: [1], values: [Float($0)]) }
        let decoded = try SafeTensors.decode(try SafeTensors.encode(tensors, metadata: [:]))
        XCTAssertEqual(decoded.tensors.map(\.name), names.sorted())
        for t in tensors { XCTAssertEqual(decoded.tensor(t.name)?.values, t.values, t.name) }
    }

    /// A file with several problems gets the same message every time (not whichever tensor a
    /// dictionary happens to visit first), so reruns and ranks agree.
    func testTheSameFileAlwaysGetsTheSameMessage() throws {
        let header = #"{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[-1],"data_offsets":[8,12]},"#
            + #""c":{"dtype":"F32","shape":[1]},"d":{"dtype":"F32","shape":[2],"data_offsets":[12,99]},"#
            + #""e":{"dtype":"Q4","shape":[1],"data_offsets":[12,16]}}"#
        let bytes = Self.file(header: header, data: [UInt8](repeating: 0, count: 16))
        var messages = Set<String>()
        // Swift seeds each dictionary's order from its storage address; live allocations of
        // varying sizes between the decodes move the parsed header around the heap.
        var ballast: [[UInt8]] = []
        for i in 0..<64 {
            do { _ = try Checkpoint.decode(bytes, name: "x"); XCTFail("decoded") } catch { messages.insert("\(error)") }
            ballast.append([UInt8](repeating: UInt8(i), count: 16 + 48 * i))
        }
        XCTAssertEqual(messages.count, 1, messages.sorted().joined(separator: "\n"))
        // The problem reported is the first tensor's, by name (which is also by offset here).
        XCTAssertTrue(messages.allSatisfy { $0.hasPrefix("x: not a valid safetensors file: tensor 'a': unsupported dtype F64") },
                      messages.sorted().joined(separator: "\n"))
    }

    // MARK: mutations of good.safetensors

    /// Decodes one mutant: it must either succeed or throw a well-formed Checkpoint.Error.
    /// Returns true on success.
    func survive(_ bytes: [UInt8], _ what: @autoclosure () -> String, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        do {
            let f = try Checkpoint.decode(bytes, name: "mutant")
            for t in f.tensors {
                XCTAssertEqual(t.shape.reduce(1, *), t.values.count, "\(what()): tensor \(t.name)", file: file, line: line)
            }
            return true
        } catch {
            checkError(error, name: "mutant", what(), file: file, line: line)
            return false
        }
    }

    func testSingleByteMutationsNeverCrash() throws {
        let good = try Self.bytes(Self.good)
        XCTAssertTrue(survive(good, "unmodified"))
        var n = 0
        for i in 0..<8 { n |= Int(good[i]) << (8 * i) }
        let dataStart = 8 + n
        var decoded = 0, refused = 0
        func tally(_ ok: Bool) { if ok { decoded += 1 } else { refused += 1 } }

        for i in good.indices {
            // Every single-bit flip. Any change to the data region must fail the checksum.
            for bit in 0..<8 {
                var m = good
                m[i] ^= 1 << bit
                let ok = survive(m, "flip byte \(i) bit \(bit)")
                tally(ok)
                if i >= dataStart { XCTAssertFalse(ok, "flip of data byte \(i) bit \(bit) was not detected") }
            }
            // Bytes that steer the JSON parser and the header-length field.
            for v: UInt8 in [0x00, 0xff, 0x7f, 0x80, 0x22, 0x2c, 0x2d, 0x2e, 0x30, 0x39, 0x3a, 0x5b, 0x5d, 0x7b, 0x7d, 0x5c, 0x65, 0x20]
            where good[i] != v {
                var m = good
                m[i] = v
                tally(survive(m, "byte \(i) set to \(v)"))
            }
            // Truncation, deletion, insertion.
            tally(survive(Array(good[..<i]), "truncated to \(i) bytes"))
            var d = good
            d.remove(at: i)
            tally(survive(d, "byte \(i) deleted"))
            for v: UInt8 in [0x00, 0x20, 0x31, 0x2d, 0x7b] {
                var ins = good
                ins.insert(v, at: i)
                tally(survive(ins, "byte \(v) inserted at \(i)"))
            }
        }
        // Header-length values around the real one and at the extremes.
        for len in [0, 1, 2, 7, 8, n - 8, n - 1, n + 1, n + 8, good.count - 8, good.count - 7, 100_000_000, 100_000_001,
                    Int(Int32.max), Int(UInt32.max), 1 << 40, Int.max] + [-1, Int.min] {
            var m = good
            withUnsafeBytes(of: UInt64(bitPattern: Int64(len)).littleEndian) { for j in 0..<8 { m[j] = $0[j] } }
            tally(survive(m, "header length \(len)"))
        }
        XCTAssertGreaterThan(refused, 10_000)
        XCTAssertGreaterThan(decoded, 0)  // e.g. flips inside the "note" string
    }

    /// Random multi-edit mutants, from a fixed seed (the same mutants on every run).
    func testSeededRandomMutationsNeverCrash() throws {
        let good = try Self.bytes(Self.good)
        var rng = SplitMix64(seed: 0x5eed_c4ec_4b01_7001)
        let tokens: [[UInt8]] = ["-1", "1e400", "18446744073709551616", "9223372036854775807", "4611686018427387904",
                                 "[]", "{}", "null", "true", "\"F32\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"",
                                 "\"__metadata__\"", "[0,0]", "0.5", "\\u0000", "\"", ",", ":"].map { Array($0.utf8) }
        for round in 0..<4000 {
            var m = good
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                guard !m.isEmpty else { break }
                let i = Int(rng.next() % UInt64(m.count))
                switch rng.next() % 6 {
                case 0: m[i] ^= UInt8(1 << (rng.next() % 8))
                case 1: m[i] = UInt8(truncatingIfNeeded: rng.next())
                case 2: m.removeSubrange(i..<min(m.count, i + 1 + Int(rng.next() % 8)))
                case 3: m.insert(UInt8(truncatingIfNeeded: rng.next()), at: i)
                case 4: m = Array(m[..<i])
                default:
                    let t = tokens[Int(rng.next() % UInt64(tokens.count))]
                    m.replaceSubrange(i..<min(m.count, i + t.count), with: t)
                }
            }
            _ = survive(m, "random mutant \(round)")
        }
    }
}

/// A small deterministic generator (SplitMix64), so the mutants do not depend on the platform.
private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
