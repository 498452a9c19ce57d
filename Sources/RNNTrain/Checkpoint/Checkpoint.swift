import Foundation
import RNN

/// Checkpoints: one safetensors file holding everything a run needs to continue exactly.
///
/// Tensors: the parameters under PyTorch names, batch norm's running statistics, and the
/// optimizer state as "optimizer.<state>.<parameter>" (e.g. optimizer.exp_avg.rnn.weight_hh_l0).
/// `__metadata__`: format, kind, step, the resolved config, the data position (the sample order
/// is a function of (seed, step, row), so the step is the whole of it), optimizer and schedule
/// state, vocabulary or normalization statistics, and "checksum", FNV-1a 64 of the tensor bytes.
///
/// Files are `ckpt-<step>.safetensors` in the checkpoint directory, written atomically by rank 0;
/// `latest` names the newest; only the newest `keep` are kept.
public enum Checkpoint {
    public static let format = "rnn-dp/1"

    public struct Error: Swift.Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Adds the checksum of the tensor bytes to the metadata and writes the file atomically.
    public static func write(path: String, tensors: [SafeTensors.Tensor], metadata: [String: String]) throws {
        var meta = metadata
        meta["format"] = format
        // The checksum covers the data region, which does not depend on the metadata.
        let probe = try SafeTensors.encode(tensors, metadata: [:])
        meta["checksum"] = SafeTensors.dataChecksum(probe)
        try AtomicFile.write(path: path, bytes: try SafeTensors.encode(tensors, metadata: meta))
    }

    /// Reads and validates a file written by `write`: safetensors structure, format version and
    /// checksum. Every problem is one line naming the file.
    public static func read(path: String) throws -> SafeTensors.File {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Error(message: "\(path): \(FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file")")
        }
        return try decode(Array(data), name: path)
    }

    public static func decode(_ bytes: [UInt8], name: String) throws -> SafeTensors.File {
        let file: SafeTensors.File
        do { file = try SafeTensors.decode(bytes) } catch let e as SafeTensors.FormatError {
            throw Error(message: "\(name): not a valid safetensors file: \(e.message)")
        }
        try verify(file, bytes: bytes, name: name)
        return file
    }

    /// The rnn-dp checks of a decoded file: format version and the checksum of `bytes`' data.
    public static func verify(_ file: SafeTensors.File, bytes: [UInt8], name: String) throws {
        guard let f = file.metadata["format"] else { throw Error(message: "\(name): no 'format' in the metadata: not an rnn-dp file") }
        guard f == format else { throw Error(message: "\(name): format '\(SafeTensors.printable(f))' is not supported (this rnn-dp reads \(format))") }
        guard let stored = file.metadata["checksum"] else { throw Error(message: "\(name): no checksum in the metadata") }
        let actual = SafeTensors.dataChecksum(bytes) ?? ""
        guard stored == actual else { throw Error(message: "\(name): checksum mismatch (stored \(SafeTensors.printable(stored)), data \(actual)): the file is corrupt") }
    }

    /// A checkpoint file, or the latest one in a directory (its `latest` pointer, else the
    /// highest-numbered ckpt-*.safetensors), or in a run directory's `checkpoints/`.
    public static func resolve(_ dirOrFile: String) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dirOrFile, isDirectory: &isDir) else {
            throw Error(message: "\(dirOrFile): no such checkpoint file or directory")
        }
        guard isDir.boolValue else { return dirOrFile }
        if let name = try? String(contentsOfFile: "\(dirOrFile)/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
           !name.isEmpty, FileManager.default.fileExists(atPath: "\(dirOrFile)/\(name)") {
            return "\(dirOrFile)/\(name)"
        }
        let files = list(dirOrFile)
        // A run's own directory (the natural thing to type) holds its checkpoints in checkpoints/.
        if files.isEmpty, FileManager.default.fileExists(atPath: "\(dirOrFile)/checkpoints/latest") || !list("\(dirOrFile)/checkpoints").isEmpty {
            return try resolve("\(dirOrFile)/checkpoints")
        }
        guard let last = files.last else { throw Error(message: "\(dirOrFile): no checkpoints (ckpt-*.safetensors) in this directory") }
        return "\(dirOrFile)/\(last.name)"
    }

    /// The resume error for a checkpoint that failed to read: when older checkpoints sit beside
    /// it, the message names the newest one that reads intact, and how to continue from it.
    public static func resumeError(_ e: Error, path: String) -> String {
        let dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let name = URL(fileURLWithPath: path).lastPathComponent
        let step = list(dir).first { $0.name == name }?.step ?? Int.max
        guard let good = list(dir).reversed().first(where: { $0.step < step && (try? read(path: "\(dir)/\($0.name)")) != nil }) else {
            return "--resume: \(e.message)"
        }
        return "--resume: \(e.message); the newest intact checkpoint is \(good.name): --resume \(dir)/\(good.name)"
    }

    /// ckpt-<step>.safetensors files in a directory, by step.
    static func list(_ dir: String) -> [(step: Int, name: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.compactMap { n -> (Int, String)? in
            guard n.hasPrefix("ckpt-"), n.hasSuffix(".safetensors"), let s = Int(n.dropFirst(5).dropLast(12)) else { return nil }
            return (s, n)
        }.sorted { $0.0 < $1.0 }
    }

    public static func fileName(step: Int) -> String { String(format: "ckpt-%08d.safetensors", step) }

    /// Writes ckpt-<step>, points `latest` at it, and removes all but the newest `keep`.
    public static func save(directory: String, step: Int, keep: Int, tensors: [SafeTensors.Tensor], metadata: [String: String]) throws -> String {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw RNNDPError("checkpoint.directory \(directory): cannot create it (\(error.localizedDescription))", exitCode: RNNDPError.runtimeFailure)
        }
        let name = fileName(step: step)
        try write(path: "\(directory)/\(name)", tensors: tensors, metadata: metadata)
        try AtomicFile.write(path: "\(directory)/latest", bytes: Array((name + "\n").utf8))
        for old in list(directory).dropLast(max(keep, 1)) where old.name != name {
            try? FileManager.default.removeItem(atPath: "\(directory)/\(old.name)")
        }
        return "\(directory)/\(name)"
    }
}
