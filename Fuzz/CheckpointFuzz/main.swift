// libFuzzer target for Checkpoint.decode: whatever the bytes, decoding must either succeed (with
// unique names and shapes matching the values) or throw a Checkpoint.Error whose message is one
// printable line (no newline or other control character) starting with the file name. A trap
// (overflow, out-of-bounds index, failed cast), an ASan report, any other error type, or a broken
// message is a finding: libFuzzer saves the input and stops.
//
// Not part of the SwiftPM package. scripts/fuzz_checkpoints.sh compiles this file together with
// Sources/RNNTrain/{SafeTensors,Checkpoint,Errors}.swift (as one module, so no import is needed)
// and Sources/RNN/Checksum.swift (as a small module named RNN), with
// `swiftc -sanitize=fuzzer,address -parse-as-library`, and runs it seeded with
// Tests/RNNTrainTests/Fixtures/bad-checkpoints.
//
// Each input is decoded twice: as the file's bytes, and "reframed" (when its own header length
// does not frame a JSON object): the bytes from the first '{' to the last '}' become the header,
// behind a correct 8-byte length, and what follows becomes the data. The second view lets
// mutations that grow or shrink the JSON still reach the parser and the tensor checks.
//
// Environment:
//   CHECKPOINT_FUZZ_DUMP=DIR  write the exact bytes of each decoded view to DIR/raw.safetensors and
//                             DIR/reframed.safetensors before decoding (to turn a crashing
//                             input into a corpus file: run the binary on that one input)
//   CHECKPOINT_FUZZ_CRASH_ONLY=1  report only traps and wrong error types, not message problems

import Foundation

private let dumpDirectory = ProcessInfo.processInfo.environment["CHECKPOINT_FUZZ_DUMP"]
private let crashOnly = ProcessInfo.processInfo.environment["CHECKPOINT_FUZZ_CRASH_ONLY"] == "1"

private func check(_ bytes: [UInt8], view: String) {
    if let dir = dumpDirectory {
        _ = FileManager.default.createFile(atPath: "\(dir)/\(view).safetensors", contents: Data(bytes))
    }
    let name = "fuzz-input"
    do {
        let file = try Checkpoint.decode(bytes, name: name)
        var seen = Set<String>()
        for t in file.tensors {
            guard seen.insert(t.name).inserted else { fatalError("\(view): tensor \(t.name) decoded twice") }
            var count = 1
            for d in t.shape {
                guard d >= 0 else { fatalError("\(view): tensor \(t.name) decoded with negative shape \(t.shape)") }
                count = count.multipliedReportingOverflow(by: d).partialValue
            }
            guard count == t.values.count else {
                fatalError("\(view): tensor \(t.name) shape \(t.shape) but \(t.values.count) values")
            }
        }
    } catch let e as Checkpoint.Error {
        if crashOnly { return }
        guard e.message.hasPrefix("\(name): ") else { fatalError("\(view): message does not start with the name: \(e.message)") }
        // One printable line: no newline of any kind and no control character (C0, DEL, C1), which
        // could also move the cursor or start an escape sequence on a terminal.
        guard !e.message.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0.value == 0x2028 || $0.value == 0x2029 }) else {
            fatalError("\(view): message is not one printable line: \(e.message.debugDescription)")
        }
    } catch {
        fatalError("\(view): threw \(type(of: error)), not Checkpoint.Error: \(error)")
    }
}

/// The input with its JSON object framed by a correct header length, or nil when the input's own
/// length field already frames a '{'-started header (then the raw view covers it).
private func reframed(_ bytes: [UInt8]) -> [UInt8]? {
    if bytes.count >= 9 {
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        if n >= 2 && n <= UInt64(bytes.count - 8) && bytes[8] == UInt8(ascii: "{") { return nil }
    }
    guard let open = bytes.firstIndex(of: UInt8(ascii: "{")),
          let close = bytes.lastIndex(of: UInt8(ascii: "}")), close > open else { return nil }
    let header = bytes[open...close]
    var out: [UInt8] = []
    out.reserveCapacity(8 + bytes.count)
    withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: header)
    out.append(contentsOf: bytes[(close + 1)...])
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    check(bytes, view: "raw")
    if let r = reframed(bytes) { check(r, view: "reframed") }
    return 0
}
