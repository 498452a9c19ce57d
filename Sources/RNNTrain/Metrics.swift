import Foundation

/// metrics.jsonl: one JSON object per line, written by rank 0 and flushed after each line.
public final class MetricsLog {
    private let handle: FileHandle
    public let path: String

    /// - append: continue an existing file (a resumed run) instead of starting a new one.
    public init(path: String, append: Bool = false) throws {
        self.path = path
        let exists = append && FileManager.default.fileExists(atPath: path)
        guard exists || FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw RNNDPError("\(path): cannot create the metrics file", exitCode: RNNDPError.runtimeFailure)
        }
        if exists { _ = try? h.seekToEnd() }
        handle = h
    }

    deinit { try? handle.close() }

    /// Writes one record. Non-finite numbers become null (JSON has no NaN).
    public func write(_ fields: [(String, Any?)]) throws {
        let body = fields.map { key, value -> String in
            "\"\(key)\":\(MetricsLog.json(value))"
        }.joined(separator: ",")
        do {
            try handle.write(contentsOf: Data("{\(body)}\n".utf8))
        } catch {
            throw RNNDPError("\(path): cannot write metrics (\(error.localizedDescription))", exitCode: RNNDPError.runtimeFailure)
        }
    }

    static func json(_ v: Any?) -> String {
        switch v {
        case nil: return "null"
        case let d as Double: return d.isFinite ? String(d) : "null"
        case let f as Float: return f.isFinite ? String(f) : "null"
        case let i as Int: return String(i)
        case let b as Bool: return b ? "true" : "false"
        case let pairs as [(String, Any?)]:
            return "{" + pairs.map { "\"\($0.0)\":\(json($0.1))" }.joined(separator: ",") + "}"
        case let a as [Double]: return "[" + a.map { json($0) }.joined(separator: ",") + "]"
        case let a as [Double?]: return "[" + a.map { json($0) }.joined(separator: ",") + "]"
        case let a as [[Double]]: return "[" + a.map { json($0) }.joined(separator: ",") + "]"
        case let s as String:
            let data = try? JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
            return data.map { String(decoding: $0.dropFirst().dropLast(), as: UTF8.self) } ?? "\"\""
        default: return "null"
        }
    }
}
