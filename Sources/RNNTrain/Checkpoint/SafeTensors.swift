import Foundation
import RNN
#if canImport(Glibc)
import Glibc
#endif

/// The safetensors format (huggingface/safetensors, "Format" in its README): an 8-byte
/// little-endian header length N, N bytes of JSON mapping each tensor name to
/// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the end of the header)
/// plus an optional "__metadata__" map of strings, then the raw little-endian tensor bytes.
/// rnn-dp writes only F32 tensors, sorted by name, with the header padded by spaces to a multiple
/// of 8 bytes.
public enum SafeTensors {
    public struct Tensor: Equatable {
        public var name: String
        public var shape: [Int]
        public var values: [Float]
        public init(name: String, shape: [Int], values: [Float]) {
            self.name = name
            self.shape = shape
            self.values = values
        }
    }

    public struct File: Equatable {
        public var tensors: [Tensor]
        public var metadata: [String: String]
        public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name } }
    }

    /// The file's bytes.
    public static func encode(_ tensors: [Tensor], metadata: [String: String]) throws -> [UInt8] {
        let sorted = tensors.sorted { $0.name < $1.name }
        var header: [String: Any] = [:]
        var offset = 0
        for t in sorted {
            precondition(t.shape.reduce(1, *) == t.values.count, "shape of \(t.name) does not match its values")
            let bytes = t.values.count * 4
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = Array(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys, .withoutEscapingSlashes]))
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        for t in sorted {
            for v in t.values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        }
        return out
    }

    /// Writes atomically: a temporary file in the same directory, flushed and fsynced, renamed
    /// over `path`, then the directory fsynced. A crash at any instant leaves either the old file
    /// or the new one, never a partial file.
    public static func write(path: String, tensors: [Tensor], metadata: [String: String]) throws {
        try AtomicFile.write(path: path, bytes: try encode(tensors, metadata: metadata))
    }

    public struct FormatError: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// A string from a file made safe for a one-line message: control characters escaped, long
    /// strings cut.
    public static func printable(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars.prefix(200) {
            switch u.properties.generalCategory {
            case .control, .lineSeparator, .paragraphSeparator, .format: out += u.escaped(asASCII: true)
            default: out += String(u)
            }
        }
        return s.unicodeScalars.count > 200 ? out + "..." : out
    }

    /// The reference implementation's limit on the JSON header (100 MB).
    public static let maxHeaderLength: UInt64 = 100_000_000

    /// FNV-1a 64 of the data region (everything after the header), as "fnv1a64:<hex>": the
    /// checksum rnn-dp stores in "__metadata__" and verifies on reading.
    public static func dataChecksum(_ bytes: [UInt8]) -> String? {
        guard bytes.count >= 8 else { return nil }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(bytes.count - 8) else { return nil }
        let h = bytes.withUnsafeBytes { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[(8 + Int(n))...])) }
        return "fnv1a64:" + String(h, radix: 16)
    }

    /// Parses and validates a safetensors file's bytes: header length within the file, JSON
    /// header, F32 dtype, shapes matching byte ranges, ranges inside the data and not overlapping.
    public static func decode(_ bytes: [UInt8]) throws -> File {
        func fail(_ m: String) -> FormatError { FormatError(message: m) }
        guard bytes.count >= 8 else { throw fail("file too short (\(bytes.count) bytes) for the 8-byte header length") }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(bytes.count - 8) else { throw fail("header length \(n) exceeds the file size \(bytes.count)") }
        guard n <= maxHeaderLength else { throw fail("header length \(n) is over the \(maxHeaderLength)-byte limit") }
        guard n >= 2, bytes[8] == UInt8(ascii: "{") else { throw fail("header does not start with '{'") }
        let headerEnd = 8 + Int(n)
        guard let obj = try? JSONSerialization.jsonObject(with: Data(bytes[8..<headerEnd])),
              let header = obj as? [String: Any] else { throw fail("header is not a JSON object") }
        var metadata: [String: String] = [:]
        var tensors: [Tensor] = []
        var ranges: [(Int, Int, String)] = []
        let dataCount = bytes.count - headerEnd
        // Sorted, so that a file with several problems always gets the same message.
        for (rawName, value) in header.sorted(by: { $0.key < $1.key }) {
            let name = rawName == "__metadata__" ? rawName : SafeTensors.printable(rawName)
            if rawName == "__metadata__" {
                guard let m = value as? [String: String] else { throw fail("__metadata__ is not a map of strings") }
                metadata = m
                continue
            }
            guard let info = value as? [String: Any], let dtype = info["dtype"] as? String,
                  let shape = info["shape"] as? [Int], let offs = info["data_offsets"] as? [Int], offs.count == 2
            else { throw fail("tensor '\(name)': malformed entry") }
            guard dtype == "F32" else { throw fail("tensor '\(name)': unsupported dtype \(SafeTensors.printable(dtype)) (rnn-dp reads F32)") }
            guard shape.allSatisfy({ $0 >= 0 }), shape.count <= 8 else { throw fail("tensor '\(name)': invalid shape \(shape)") }
            let (count, overflow) = shape.reduce((1, false)) { acc, d in
                let (p, o) = acc.0.multipliedReportingOverflow(by: d)
                return (p, acc.1 || o)
            }
            guard !overflow else { throw fail("tensor '\(name)': shape \(shape) is too large") }
            guard offs[0] >= 0, offs[1] >= offs[0], offs[1] <= dataCount else {
                throw fail("tensor '\(name)': data offsets \(offs) out of range (data has \(dataCount) bytes)")
            }
            let (bytesNeeded, tooBig) = count.multipliedReportingOverflow(by: 4)
            guard !tooBig else { throw fail("tensor '\(name)': shape \(shape) is too large") }
            guard offs[1] - offs[0] == bytesNeeded else {
                throw fail("tensor '\(name)': shape \(shape) needs \(bytesNeeded) bytes, offsets give \(offs[1] - offs[0])")
            }
            ranges.append((offs[0], offs[1], name))  // printable, for the overlap message
            var values = [Float](repeating: 0, count: count)
            let base = headerEnd + offs[0]
            for i in 0..<count {
                var bits: UInt32 = 0
                for j in 0..<4 { bits |= UInt32(bytes[base + 4 * i + j]) << (8 * UInt32(j)) }
                values[i] = Float(bitPattern: bits)
            }
            tensors.append(Tensor(name: rawName, shape: shape, values: values))
        }
        ranges.sort { $0.0 < $1.0 }
        for i in ranges.indices.dropFirst() where ranges[i].0 < ranges[i - 1].1 {
            throw fail("tensors '\(ranges[i - 1].2)' and '\(ranges[i].2)' overlap")
        }
        return File(tensors: tensors.sorted { $0.name < $1.name }, metadata: metadata)
    }

    public static func read(path: String) throws -> File { try readWithBytes(path: path).file }

    /// The file and its bytes (for a checksum over them, `Checkpoint.verify`), read once.
    public static func readWithBytes(path: String) throws -> (file: File, bytes: [UInt8]) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FormatError(message: "\(path): \(FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file")")
        }
        let bytes = Array(data)
        do { return (try decode(bytes), bytes) } catch let e as FormatError {
            throw FormatError(message: "\(path): \(e.message)")
        }
    }
}

/// Durable replacement of a file: write a temporary sibling, fsync, rename, fsync the directory.
public enum AtomicFile {
    public static func write(path: String, bytes: [UInt8]) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let tmp = "\(dir)/.\(url.lastPathComponent).tmp.\(getpid())"
        func fail(_ what: String) -> RNNDPError {
            RNNDPError("\(path): \(what): \(String(cString: strerror(errno)))", exitCode: RNNDPError.runtimeFailure)
        }
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw fail("cannot create \(tmp)") }
        var written = 0
        let ok: Bool = bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 { if errno == EINTR { continue }; return false }
                written += n
            }
            return true
        }
        guard ok, fsync(fd) == 0 else {
            let e = fail("write failed")
            close(fd)
            unlink(tmp)
            throw e
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            let e = fail("cannot rename \(tmp) into place")
            unlink(tmp)
            throw e
        }
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }
}
