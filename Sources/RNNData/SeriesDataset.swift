import Foundation
import RNN

/// One numeric column of a CSV file as a time series, z-score normalized with the statistics of
/// the training part (the first 1 - validation_fraction of the rows). A sample is a window of T
/// values; the target is the next value (last_step) or the next value at every step (every_step).
/// Missing (empty) values are an error unless `interpolateMissing`, which fills each gap linearly
/// between its neighbours (and with the nearest value at either end).
public final class SeriesDataset: Dataset {
    public let values: [Float]  // normalized, (rows)
    public let mean: Double
    public let std: Double
    public let trainCount: Int
    public let steps: Int
    public let output: OutputMode
    public let seed: UInt64
    public let column: String
    public let filled: Int
    public let validationCount: Int
    let path: String
    let validationStarts: [Int]

    public init(path: String, column: String?, validationFraction: Double, interpolateMissing: Bool,
                steps: Int, output: OutputMode, seed: UInt64, maxValidation: Int,
                normalization: (mean: Double, std: Double)? = nil) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError(FileManager.default.fileExists(atPath: path)
                ? "\(path): cannot read the file" : "\(path): no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw DataError("\(path): not valid UTF-8 text") }
        var lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).map(String.init)
        while let last = lines.last, last.trimmingCharacters(in: .whitespaces).isEmpty { lines.removeLast() }
        guard lines.count >= 2 else { throw DataError("\(path): expected a header line and at least one row") }
        let header = SeriesDataset.fields(lines[0])
        let col: Int
        if let column {
            if let i = header.firstIndex(of: column) {
                col = i
            } else if let i = Int(column), i >= 0, i < header.count {
                col = i
            } else {
                throw DataError("\(path): no column '\(column)' (columns: \(header.joined(separator: ", ")))")
            }
        } else if header.count == 2 {
            col = 1
        } else {
            throw DataError("\(path): has \(header.count) columns (\(header.joined(separator: ", "))); set data.column")
        }
        self.column = header[col]
        var raw: [Double?] = []
        for (n, line) in lines.dropFirst().enumerated() {
            let f = SeriesDataset.fields(line)
            guard f.count == header.count else { throw DataError("\(path):\(n + 2): has \(f.count) fields, the header has \(header.count)") }
            let s = f[col]
            if s.isEmpty || s == "NA" || s == "NaN" || s == "nan" {
                guard interpolateMissing else {
                    throw DataError("\(path):\(n + 2): column '\(header[col])' is missing a value (set data.interpolate_missing: true to fill gaps)")
                }
                raw.append(nil)
            } else if let v = Double(s), v.isFinite {
                raw.append(v)
            } else {
                throw DataError("\(path):\(n + 2): column '\(header[col])' has '\(s)', not a number")
            }
        }
        let known = raw.indices.filter { raw[$0] != nil }
        guard !known.isEmpty else { throw DataError("\(path): column '\(header[col])' has no values") }
        var series = [Double](repeating: 0, count: raw.count)
        var filled = 0
        for i in raw.indices {
            if let v = raw[i] { series[i] = v; continue }
            filled += 1
            let prev = known.last { $0 < i }
            let next = known.first { $0 > i }
            switch (prev, next) {
            case let (p?, n?):
                let w = Double(i - p) / Double(n - p)
                series[i] = raw[p]! * (1 - w) + raw[n]! * w
            case let (p?, nil): series[i] = raw[p]!
            case let (nil, n?): series[i] = raw[n]!
            default: break
            }
        }
        let trainCount = Int((Double(series.count) * (1 - validationFraction)).rounded(.down))
        guard trainCount >= steps + 2 else {
            throw DataError("\(path): the training part has \(trainCount) values, too few for windows of sequence_length \(steps) plus a target")
        }
        let trainPart = series[0..<trainCount]
        let mean = normalization?.mean ?? trainPart.reduce(0, +) / Double(trainCount)
        let variance = trainPart.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(trainCount)
        let std = normalization?.std ?? (variance > 0 ? variance.squareRoot() : 1)
        self.values = series.map { Float(($0 - mean) / std) }
        self.mean = mean
        self.std = std
        self.trainCount = trainCount
        self.steps = steps
        self.output = output
        self.seed = seed
        self.filled = filled
        self.path = path
        // Validation windows: last_step predicts each validation value from the T values before it;
        // every_step uses non-overlapping windows inside the validation part.
        var vstarts: [Int] = []
        switch output {
        case .lastStep:
            vstarts = Array(stride(from: max(trainCount - steps, 0), to: series.count - steps, by: 1))
        case .everyStep:
            vstarts = Array(stride(from: trainCount, to: series.count - steps, by: steps))
        }
        if vstarts.count > maxValidation { vstarts = Array(vstarts.prefix(maxValidation)) }
        self.validationStarts = vstarts
        self.validationCount = vstarts.count
    }

    static func fields(_ line: String) -> [String] {
        line.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
    }

    public var summary: String {
        "csv \(path) column '\(column)': \(trainCount) training and \(values.count - trainCount) validation values, mean \(String(format: "%.4g", mean)), std \(String(format: "%.4g", std))\(filled > 0 ? ", \(filled) interpolated" : "")"
    }
    public var input: InputKind { .dense(features: 1) }
    public var outputSize: Int { 1 }

    public func trainingBatch(step: Int, globalBatch: Int, rows: Range<Int>) -> Batch {
        // Windows [s, s + T] lie wholly in the training part.
        var starts: [Int] = []
        windowStarts(seed: seed, step: step, rows: rows, windows: trainCount - steps, into: &starts)
        return makeBatch(starts: starts)
    }

    public func validationBatch(_ samples: Range<Int>) -> Batch {
        makeBatch(starts: Array(validationStarts[samples]))
    }

    private func makeBatch(starts: [Int]) -> Batch {
        var bb = BatchBuilder(steps: steps, batchSize: starts.count)
        bb.setFeatures(width: 1) { b, t, _ in values[starts[b] + t] }
        switch output {
        case .everyStep: bb.setValueTargets(rows: steps, width: 1) { b, t, _ in values[starts[b] + t + 1] }
        case .lastStep: bb.setValueTargets(rows: 1, width: 1) { b, _, _ in values[starts[b] + steps] }
        }
        return bb.batch
    }
}
