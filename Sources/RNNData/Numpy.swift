import Foundation

/// A NumPy .npy array (format versions 1-3, little-endian, C order): its shape and its values as
/// Float or as Int32, whichever the file holds. The format: magic "\u{93}NUMPY", major and minor
/// version bytes, a header length (2 bytes in v1, 4 in v2/v3), a Python dict literal with 'descr',
/// 'fortran_order' and 'shape', then the raw data (numpy/lib/format.py).
public struct NumpyArray: Equatable {
    public enum Values: Equatable {
        case float([Float])
        case int([Int32])
    }
    public var shape: [Int]
    public var values: Values
    public var count: Int { shape.reduce(1, *) }
    public var isInteger: Bool { if case .int = values { return true }; return false }
    public init(shape: [Int], values: Values) {
        self.shape = shape
        self.values = values
    }

    public static func read(path: String) throws -> NumpyArray {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError(FileManager.default.fileExists(atPath: path) ? "\(path): cannot read the file" : "\(path): no such file")
        }
        do { return try parse(Array(data)) } catch let e as DataError { throw DataError("\(path): \(e.message)") }
    }

    public static func parse(_ b: [UInt8]) throws -> NumpyArray {
        guard b.count >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else { throw DataError("not a .npy file (bad magic)") }
        let major = b[6]
        let (headerLength, start): (Int, Int)
        switch major {
        case 1: (headerLength, start) = (Int(b[8]) | Int(b[9]) << 8, 10)
        case 2, 3:
            guard b.count >= 12 else { throw DataError("truncated .npy header") }
            (headerLength, start) = (Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24, 12)
        default: throw DataError("unsupported .npy version \(major)")
        }
        guard start + headerLength <= b.count else { throw DataError("truncated .npy header") }
        let header = String(decoding: b[start..<(start + headerLength)], as: UTF8.self)
        func field(_ key: String) -> String? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descrField = field("descr"), let q1 = descrField.firstIndex(of: "'") else { throw DataError("no 'descr' in the .npy header") }
        let rest = descrField[descrField.index(after: q1)...]
        guard let q2 = rest.firstIndex(of: "'") else { throw DataError("malformed 'descr'") }
        let descr = String(rest[..<q2])
        if let f = field("fortran_order"), f.hasPrefix("True") { throw DataError("Fortran-order arrays are not supported (save with np.ascontiguousarray)") }
        guard let shapeField = field("shape"), let open = shapeField.firstIndex(of: "("), let close = shapeField.firstIndex(of: ")") else {
            throw DataError("no 'shape' in the .npy header")
        }
        let dims = shapeField[shapeField.index(after: open)..<close].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        var shape: [Int] = []
        for d in dims {
            guard let v = Int(d), v >= 0 else { throw DataError("bad shape entry '\(d)'") }
            shape.append(v)
        }
        let (count, overflow) = shape.reduce((1, false)) { acc, d in let (p, o) = acc.0.multipliedReportingOverflow(by: d); return (p, acc.1 || o) }
        let data = start + headerLength
        let width: Int
        switch descr {
        case "<f4", "<i4", "<u4": width = 4
        case "<f8", "<i8", "<u8": width = 8
        case "|u1", "|i1", "|b1": width = 1
        case "<i2", "<u2", "<f2": width = 2
        default: throw DataError("unsupported dtype '\(descr)' (use float32/float64 or an integer type, little-endian)")
        }
        guard !overflow, count.multipliedReportingOverflow(by: width).partialValue <= b.count - data else {
            throw DataError("data shorter than its shape \(shape) of \(descr) needs")
        }
        func u(_ i: Int, _ n: Int) -> UInt64 {
            var v: UInt64 = 0
            for j in 0..<n { v |= UInt64(b[data + i * n + j]) << (8 * UInt64(j)) }
            return v
        }
        switch descr {
        case "<f4": return NumpyArray(shape: shape, values: .float((0..<count).map { Float(bitPattern: UInt32(u($0, 4))) }))
        case "<f8": return NumpyArray(shape: shape, values: .float((0..<count).map { Float(Double(bitPattern: u($0, 8))) }))
        case "<f2": return NumpyArray(shape: shape, values: .float((0..<count).map { Float(Float16(bitPattern: UInt16(u($0, 2)))) }))
        default:
            var ints = [Int32](repeating: 0, count: count)
            for i in 0..<count {
                let raw = u(i, width)
                let signed = descr.contains("i")
                let v: Int64 = signed ? Int64(bitPattern: raw << (64 - 8 * UInt64(width))) >> (64 - 8 * Int64(width)) : Int64(bitPattern: raw)
                guard v >= Int64(Int32.min), v <= Int64(Int32.max) else { throw DataError("integer value \(v) at index \(i) does not fit in 32 bits") }
                ints[i] = Int32(v)
            }
            return NumpyArray(shape: shape, values: .int(ints))
        }
    }

    /// The bytes of a version-1 .npy file holding this array (float32 or int32).
    public func encoded() -> [UInt8] {
        let descr = isInteger ? "<i4" : "<f4"
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)]
        out += Array(header.utf8)
        switch values {
        case .float(let f): for v in f { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
        case .int(let a): for v in a { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        }
        return out
    }
}
